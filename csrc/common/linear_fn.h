// The one signature every linear kernel (y = x W^T + b) has, whatever the weight format.
//
// A weight type W (csrc/formats/*_weight.h) splits its output rows into `units` (a CSR row, a
// block of SELL-C rows, a block row of BSR, ...), each covering up to `unit_rows` consecutive
// output rows, and gives a prefix sum of their cost (`unit_cost[u + 1] - unit_cost[u]`, in
// multiply-adds plus a per-unit overhead) so the generic driver (csrc/linear/driver.h) can split
// them across threads. Units: elements, never bytes.
#pragma once
#include <cstdint>

namespace sparseprune {

// Must match sparseprune/formats/*.py FORMAT_ID (the packed header stores it).
enum class Format : int32_t { kCsr = 1, kSell = 2, kBsr = 3, kNm = 4 };

// spmv: `in` is x itself, rows r < nvalid at in + r * ldx (the small-batch path);
// spmm: `in` is an activation panel of MR = the row's mr batch rows packed transposed,
//       in[k * MR + r] = x[r, k], zero for r >= nvalid, 64-byte aligned; ldx is MR.
// spconv: direct sparse convolution (conv/conv_fn.h has its own signature).
enum class Family : int32_t { kSpmv = 0, kSpmm = 1, kSpconv = 2 };

// Writes y[r * ldy + o] = bias[o] + sum_k W[o, k] x[r, k] for r < nvalid and every output row o
// of units [u0, u1). bias may be null. Inputs were validated when the weight was built.
template <class W>
using LinearFn = void (*)(const W& w, const float* in, int64_t nvalid, int64_t ldx,
                          const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1);

}  // namespace sparseprune
