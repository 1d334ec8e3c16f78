// Declarations of every SpMM variant in spmm_kernels.inc.
#pragma once
#include "../common/cpu.h"
#include "../common/csr.h"

namespace sparseprune {
#define SP_KERNEL(isa, name, fn, format, mr, nr)                                          \
  void fn(const CsrMatrix& w, const float* panel, int64_t nvalid, const float* bias,     \
          float* y, int64_t ldy, int64_t r0, int64_t r1);
#include "spmm_kernels.inc"
#undef SP_KERNEL
}  // namespace sparseprune
