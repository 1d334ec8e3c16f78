// x86 helper shared by the AVX kernels that gather x[col] with scalar loads (include only from
// files compiled with -mavx2 or the AVX-512 flags).
#pragma once
#include <immintrin.h>

namespace sparseprune {

// vinsertps with an m32 operand: one macro-op. GCC keeps _mm_insert_ps(_mm_load_ss(p)) as two.
template <int kImm>
inline __m128 insert_ps_mem(__m128 a, const float* p) {
  asm("vinsertps %[imm], %[mem], %[a], %[a]" : [a] "+x"(a) : [mem] "m"(*p), [imm] "i"(kImm));
  return a;
}

}  // namespace sparseprune
