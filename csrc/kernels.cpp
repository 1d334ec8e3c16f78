#include "kernels.h"

#include "common/cpu.h"

namespace sparseprune {

// Panels sit back to back in one buffer and are read with aligned 8-float loads.
#define SP_KERNEL(isa, fn, W, mr, nr) \
  static_assert((mr) % 8 == 0, #fn ": panel width must be a multiple of 8");
#include "spmm/spmm_kernels.inc"
#undef SP_KERNEL

const std::vector<KernelInfo>& all_kernels() {
  static const std::vector<KernelInfo> table = {
#define SP_KERNEL(isa, fn, W, mr, nr) \
  {#fn, Family::kSpmm, W::kFormat, isa, mr, nr, AnyKernelFn(LinearFn<W>(&fn))},
#include "spmm/spmm_kernels.inc"
#undef SP_KERNEL
#define SP_KERNEL(isa, fn, W, mr, nr) \
  {#fn, Family::kSpmv, W::kFormat, isa, mr, nr, AnyKernelFn(LinearFn<W>(&fn))},
#include "spmv/spmv_kernels.inc"
#undef SP_KERNEL
#define SP_CONV(isa, fn, W, px, nr) \
  {#fn, Family::kSpconv, W::kFormat, isa, px, nr, AnyKernelFn(ConvFn<W>(&fn))},
#include "spconv/spconv_kernels.inc"
#undef SP_CONV
  };
  return table;
}

const KernelInfo* find_kernel(const std::string& name) {
  for (const KernelInfo& k : all_kernels())
    if (name == k.name) return &k;
  return nullptr;
}

const char* family_name(Family f) {
  switch (f) {
    case Family::kSpmv: return "spmv";
    case Family::kSpmm: return "spmm";
    case Family::kSpconv: return "spconv";
  }
  return "unknown";
}

const char* format_name(Format f) {
  switch (f) {
    case Format::kCsr: return "csr";
    case Format::kSell: return "sell";
    case Format::kBsr: return "bsr";
    case Format::kNm: return "nm";
  }
  return "unknown";
}

bool cpu_supports(const KernelInfo& k) { return (cpu_isa_mask() & k.isa) != 0; }

bool isa_allowed(const KernelInfo& k) { return (active_isa_mask() & k.isa) != 0; }

}  // namespace sparseprune
