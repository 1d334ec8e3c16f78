#include "kernels.h"

#include "common/cpu.h"
#include "spmm/spmm_kernels.h"
#include "spmm/spmm_sell_kernels.h"
#include "spmv/spmv_kernels.h"

namespace sparseprune {

// Panels sit back to back in one buffer and are read with aligned 8-float loads.
#define SP_KERNEL(isa, name, fn, format, mr, nr) \
  static_assert((mr) % 8 == 0, name ": panel width must be a multiple of 8");
#include "spmm/spmm_sell_kernels.inc"
#include "spmm/spmm_kernels.inc"
#undef SP_KERNEL

const std::vector<KernelInfo>& all_kernels() {
  static const std::vector<KernelInfo> table = {
#define SP_KERNEL(isa, name, fn, format, mr, nr) \
  {name, "spmm", format, isa, mr, nr, reinterpret_cast<void*>(&fn)},
#include "spmm/spmm_sell_kernels.inc"
#include "spmm/spmm_kernels.inc"
#undef SP_KERNEL
#define SP_KERNEL(isa, name, fn, format, mr, nr) \
  {name, "spmv", format, isa, mr, nr, reinterpret_cast<void*>(&fn)},
#include "spmv/spmv_kernels.inc"
#undef SP_KERNEL
  };
  return table;
}

const KernelInfo* find_kernel(const std::string& name) {
  for (const KernelInfo& k : all_kernels())
    if (name == k.name) return &k;
  return nullptr;
}

bool cpu_supports(const KernelInfo& k) { return (cpu_isa_mask() & k.isa) != 0; }

bool isa_allowed(const KernelInfo& k) { return (active_isa_mask() & k.isa) != 0; }

}  // namespace sparseprune
