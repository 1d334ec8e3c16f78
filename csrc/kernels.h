// The registry of every compiled kernel variant (all families) and the default choice per family.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "common/csr.h"

namespace sparseprune {

struct KernelInfo {
  const char* name;    // e.g. "spmm_csr_f32_16x1_avx2"
  const char* family;  // "spmm" | "spmv"
  const char* format;  // "csr"
  uint32_t isa;        // one Isa bit
  int mr;              // batch rows per call
  int nr;              // output rows per step
  void* fn;            // SpmmFn or SpmvFn by family
};

// Every row of every kernel table, in table order (most preferred first within a family).
const std::vector<KernelInfo>& all_kernels();

// The row with this name, or nullptr.
const KernelInfo* find_kernel(const std::string& name);

// True when the CPU can run the variant (ignores the SPARSEPRUNE_ISA cap).
bool cpu_supports(const KernelInfo& k);

// True when the variant is allowed under the SPARSEPRUNE_ISA cap.
bool isa_allowed(const KernelInfo& k);

}  // namespace sparseprune
