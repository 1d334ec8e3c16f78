// CPU feature detection and the ISA cap read from SPARSEPRUNE_ISA.
#pragma once
#include <cstdint>
#include <string>

namespace sparseprune {

// Bit per instruction-set level a kernel variant may require.
enum Isa : uint32_t {
  kIsaScalar = 1u << 0,  // portable C++, any x86-64 (or any CPU at all)
  kIsaAvx2 = 1u << 1,    // AVX2 + FMA3
  kIsaAvx512 = 1u << 2,  // AVX-512 F + BW + DQ + VL (and AVX2 + FMA)
};

// ISAs the running CPU supports (always includes kIsaScalar).
uint32_t cpu_isa_mask();

// cpu_isa_mask() limited by the SPARSEPRUNE_ISA environment variable read at first call
// ("scalar", "avx2", "avx512"); unknown values are ignored with a warning on stderr.
uint32_t active_isa_mask();

// "scalar" / "avx2" / "avx512" for one bit.
const char* isa_name(uint32_t isa);

}  // namespace sparseprune
