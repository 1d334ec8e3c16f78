// y = x W^T + b with W in CSR: splits the batch into activation panels and SpMV rows, splits
// output rows across threads by nonzero count, and calls the chosen kernel variants.
#pragma once
#include <cstdint>

#include "common/csr.h"
#include "common/sell.h"
#include "kernels.h"

namespace sparseprune {

// The variants one call uses. Panels use spmm_big (mr_big rows) while the batch fills it, the
// rest goes to spmm_small panels, and fewer than kMinPanelRows leftover rows go to spmv.
// A null spmm_big routes every row to spmv; a null spmv routes every row to panels.
// With a SellPack, full panels of mr_sell rows use the sell kernel, then one panel of
// mr_sell_small rows if that many remain, before the CSR panels and spmv take the rest.
struct LinearKernels {
  SellFn sell = nullptr;
  int mr_sell = 0;
  SellFn sell_small = nullptr;
  int mr_sell_small = 0;
  SpmvFn spmv = nullptr;
  SpmmFn spmm_big = nullptr;
  int mr_big = 0;
  SpmmFn spmm_small = nullptr;
  int mr_small = 0;
};

constexpr int64_t kMinPanelRows = 4;

// The default choice under the CPU and the SPARSEPRUNE_ISA cap.
const LinearKernels& default_linear_kernels();

// Only the named variant (an spmm or sell row: every batch row goes through its panels; an spmv
// row: every batch row goes through it). For tests and benchmarks.
LinearKernels single_kernel(const KernelInfo& k);

// x: [batch, w.cols] with row stride ldx; y: [batch, w.rows] with row stride ldy; bias: [w.rows]
// or null. sell: the SellPack of w, or null. Inputs must already be validated. Uses up to
// nthreads threads (>= 1).
void csr_linear(const CsrMatrix& w, const SellPack* sell, const float* x, int64_t batch,
                int64_t ldx, const float* bias, float* y, int64_t ldy, int nthreads,
                const LinearKernels& k);

}  // namespace sparseprune
