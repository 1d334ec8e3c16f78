#include "cpu.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace sparseprune {

uint32_t cpu_isa_mask() {
  static const uint32_t mask = [] {
    uint32_t m = kIsaScalar;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) m |= kIsaAvx2;
    // AVX-512 rows are compiled with F, BW, DQ and VL (Skylake-X, Ice Lake, Zen 4 and later).
    if ((m & kIsaAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      m |= kIsaAvx512;
#endif
    return m;
  }();
  return mask;
}

uint32_t active_isa_mask() {
  static const uint32_t mask = [] {
    uint32_t m = cpu_isa_mask();
    const char* cap = std::getenv("SPARSEPRUNE_ISA");
    if (cap == nullptr || *cap == '\0') return m;
    uint32_t limit;
    if (std::strcmp(cap, "scalar") == 0) {
      limit = kIsaScalar;
    } else if (std::strcmp(cap, "avx2") == 0) {
      limit = kIsaScalar | kIsaAvx2;
    } else if (std::strcmp(cap, "avx512") == 0) {
      limit = kIsaScalar | kIsaAvx2 | kIsaAvx512;
    } else {
      std::fprintf(stderr,
                   "sparseprune: ignoring SPARSEPRUNE_ISA=%s (expected scalar, avx2 or avx512)\n",
                   cap);
      return m;
    }
    return m & limit;
  }();
  return mask;
}

const char* isa_name(uint32_t isa) {
  switch (isa) {
    case kIsaScalar: return "scalar";
    case kIsaAvx2: return "avx2";
    case kIsaAvx512: return "avx512";
    default: return "unknown";
  }
}

}  // namespace sparseprune
