// Writing a panel kernel's accumulator tile out to y.
//
// Panel kernels accumulate acc[row][q] (weight row, batch row: the batch is the vector
// dimension), while y is [batch, rows] with a row stride of ldy floats. Writing one weight row
// for every batch row stores nvalid floats ldy apart: at ldy = 4096 that is 16 KiB, so all of
// them land in the same L1 set (and few L2 sets) and evict each other on every row of the tile.
// Measured on Zen 4 at batch 64: ~1.3 ms of a 99.9 %-sparse 4096x4096 layer went there, more
// than a 95 % layer's arithmetic. Walking batch row by batch row writes runs of contiguous
// floats instead, and the strided reads come from the tile, which is in L1.
#pragma once
#include <cstdint>
#if SPARSEPRUNE_X86
#include <xmmintrin.h>
#endif

namespace sparseprune {
// Internal linkage on purpose: this header is compiled into scalar, AVX2 and AVX-512 files, and
// an inline function with external linkage is merged into one copy at link time, which could be
// the AVX-512 one called from the scalar kernels (an illegal instruction on older CPUs). The
// build checks that ISA-flagged objects export no such symbol (cmake/check_isa_objects.cmake).
namespace {

// y[q * ldy + i] = acc[i * lda + q] + (bias ? bias[i] : 0) for i < nrows, q < nvalid.
// y and bias already point at the tile's first row. On x86, 4x4 blocks go through an SSE
// transpose (baseline on every x86-64 CPU, so this header serves every ISA's kernels); the
// edges, and other targets, are scalar.
inline void store_tile_transposed(const float* acc, int64_t lda, int64_t nrows, int64_t nvalid,
                                  const float* bias, float* y, int64_t ldy) {
  int64_t q0 = 0;
#if SPARSEPRUNE_X86
  for (; q0 + 4 <= nvalid; q0 += 4) {
    int64_t i = 0;
    for (; i + 4 <= nrows; i += 4) {
      __m128 r0 = _mm_loadu_ps(acc + (i + 0) * lda + q0);
      __m128 r1 = _mm_loadu_ps(acc + (i + 1) * lda + q0);
      __m128 r2 = _mm_loadu_ps(acc + (i + 2) * lda + q0);
      __m128 r3 = _mm_loadu_ps(acc + (i + 3) * lda + q0);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);  // r_b now holds batch row q0 + b, weight rows i..i+3
      if (bias) {
        const __m128 b = _mm_loadu_ps(bias + i);
        r0 = _mm_add_ps(r0, b), r1 = _mm_add_ps(r1, b), r2 = _mm_add_ps(r2, b);
        r3 = _mm_add_ps(r3, b);
      }
      _mm_storeu_ps(y + (q0 + 0) * ldy + i, r0);
      _mm_storeu_ps(y + (q0 + 1) * ldy + i, r1);
      _mm_storeu_ps(y + (q0 + 2) * ldy + i, r2);
      _mm_storeu_ps(y + (q0 + 3) * ldy + i, r3);
    }
    for (int64_t q = q0; q < q0 + 4; ++q)
      for (int64_t j = i; j < nrows; ++j)
        y[q * ldy + j] = acc[j * lda + q] + (bias ? bias[j] : 0.f);
  }
#endif
  for (int64_t q = q0; q < nvalid; ++q)
    for (int64_t j = 0; j < nrows; ++j) y[q * ldy + j] = acc[j * lda + q] + (bias ? bias[j] : 0.f);
}

}  // namespace
}  // namespace sparseprune
