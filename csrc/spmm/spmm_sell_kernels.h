// Declarations of every variant in spmm_sell_kernels.inc.
#pragma once
#include "../common/cpu.h"
#include "../common/sell.h"

namespace sparseprune {
#define SP_KERNEL(isa, name, fn, format, mr, nr)                                          \
  void fn(const SellPack& w, const float* panel, int64_t nvalid, const float* bias,      \
          float* y, int64_t ldy, int64_t rb0, int64_t rb1);
#include "spmm_sell_kernels.inc"
#undef SP_KERNEL
}  // namespace sparseprune
