// Spreading one of 4 weights to every lane of a zmm, for AVX-512 panel kernels that load a
// step's 4 weights with one 128-bit load instead of 4 broadcast loads (load slots bound those
// kernels at <= 32 batch rows; see spmm_sell_f32_avx512.cpp). Include from AVX-512 files only.
#pragma once
#include <immintrin.h>

namespace sparseprune {
// Internal linkage, as in store_tile.h: an ISA-flagged inline must not be merged across objects.
namespace {

// v4 holds 4 weights in every 128-bit lane; element i of each lane, everywhere (vpermilps imm).
inline __m512 broadcast_lane(__m512 v4, int i) {
  switch (i) {
    case 0: return _mm512_shuffle_ps(v4, v4, 0x00);
    case 1: return _mm512_shuffle_ps(v4, v4, 0x55);
    case 2: return _mm512_shuffle_ps(v4, v4, 0xaa);
    default: return _mm512_shuffle_ps(v4, v4, 0xff);
  }
}

}  // namespace
}  // namespace sparseprune
