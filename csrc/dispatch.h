// Kernel selection, in one place: per weight format, an ordered candidate list from the tables
// (filtered by the CPU and the SPARSEPRUNE_ISA cap), the default plan built from it, and plans
// built from kernel names (so convert() can store a measured per-layer choice).
#pragma once
#include <string>
#include <vector>

#include "kernels.h"
#include "linear/driver.h"

namespace sparseprune {

// The default plan of format W: the first runnable spmv row, and per panel width the first
// runnable spmm row, widest first. Chosen once; logged to stderr when SPARSEPRUNE_LOG=1.
template <class W>
const LinearPlan<W>& default_plan();

// A plan of exactly the named rows (spmv rows and/or spmm rows of format W). Throws
// std::invalid_argument naming the row when it is unknown, of another format, or not runnable
// on this CPU.
template <class W>
LinearPlan<W> plan_from_names(const std::vector<std::string>& names);

// The names in a plan (spmv first, then panels widest first).
template <class W>
std::vector<std::string> plan_names(const LinearPlan<W>& plan);

// A convolution kernel row (ConvFn<W>) and its tile width in pixels.
template <class W>
struct ConvKernel {
  ConvFn<W> fn = nullptr;
  int px = 0;
  int nr = 0;  // block rows handled (0: any)
  const char* name = "";
};

// The convolution rows of format W for block rows r (CSR: 1) at the best ISA the CPU runs
// (within the SPARSEPRUNE_ISA cap) that has a row for r, one per tile width; rows for any r
// (nr = 0) only where no row is specific to r.
template <class W>
std::vector<ConvKernel<W>> default_conv_kernels(int r);

// The row of `rows` whose tile width suits an output of `pixels` pixels per channel best.
template <class W>
ConvKernel<W> pick_conv_kernel(const std::vector<ConvKernel<W>>& rows, int64_t pixels);

// The named convolution row; std::invalid_argument when unknown, not a conv row of W, not for
// block rows r, or not runnable on this CPU.
template <class W>
ConvKernel<W> conv_kernel_from_name(const std::string& name, int r);

// One line per format: what the default plans chose, e.g. "csr: spmv=..., spmm=[...]".
std::string dispatch_log();

}  // namespace sparseprune
