// Direct sparse convolution over r x 1 block filters (BSR), AVX2 + FMA (this file alone gets
// -mavx2 -mfma). The AVX-512 kernel's scheme (spconv_bsr_f32_avx512.cpp) with ymm vectors and
// at most 8 accumulators per pass (16 ymm registers): a 16 x 1 block runs as two passes of 8
// channels over the same tap (the second pass reloads the input, from L1). The last, partial
// tile reads the prepared input with plain loads (>= 64 floats of slack past the last plane)
// and goes through stack rows for y: vmaskmovps stores are microcoded on AMD cores (see
// spconv_csr_f32_avx2.cpp); only the direct path, which never has a partial tile, reads x.
#include <immintrin.h>

#include <algorithm>

#include "../kernels.h"

namespace sparseprune {
namespace {

template <int R, int RS, int V, bool kTail>
inline void tile(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias,
                 float* y, int64_t ldy, int64_t u0, int64_t u1, int64_t p0, int rem) {
  static_assert(RS * V <= 8 && R % RS == 0, "8 accumulators per pass");
  const float* val = w.values.data();
  const int32_t* off = g.offsets.data();
  __m256i m[V];
  for (int q = 0; q < V; ++q) {
    const int left = std::max(0, std::min(8, rem - 8 * q));
    m[q] = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  const bool mask_in = kTail && g.direct;  // never true (conv_geometry.cpp): kept as a guard
  auto load = [&](const float* p, int q) {
    return mask_in ? _mm256_maskload_ps(p, m[q]) : _mm256_loadu_ps(p);
  };
  alignas(32) float rows[RS][8 * V] = {};  // the tail tile's y pixels
  const float* xp = xq + p0;
  const int64_t nb1 = g.nb + 1;
  for (int64_t b = 0; b < g.nb; ++b) {
    for (int64_t i = u0; i < u1; ++i) {
      const int64_t j0 = g.blk[i * nb1 + b], je = g.blk[i * nb1 + b + 1];
      for (int a0 = 0; a0 < R; a0 += RS) {
        float* yo = y + (i * R + a0) * ldy + p0;
        __m256 acc[RS][V];
        if (kTail && b > 0)
          for (int a = 0; a < RS; ++a)
            for (int k = 0; k < rem; ++k) rows[a][k] = yo[a * ldy + k];
        for (int a = 0; a < RS; ++a)
          for (int q = 0; q < V; ++q)
            acc[a][q] = b == 0 ? _mm256_set1_ps(bias ? bias[i * R + a0 + a] : 0.f)
                        : kTail ? _mm256_load_ps(rows[a] + 8 * q)
                                : _mm256_loadu_ps(yo + a * ldy + 8 * q);
        for (int64_t j = j0; j < je; ++j) {
          const float* x = xp + off[j];
          __m256 xv[V];
          for (int q = 0; q < V; ++q) xv[q] = load(x + 8 * q, q);
          const float* v = val + j * R + a0;
          for (int a = 0; a < RS; ++a) {
            const __m256 wa = _mm256_set1_ps(v[a]);
            for (int q = 0; q < V; ++q) acc[a][q] = _mm256_fmadd_ps(wa, xv[q], acc[a][q]);
          }
        }
        for (int a = 0; a < RS; ++a) {
          for (int q = 0; q < V; ++q) {
            if (kTail) _mm256_store_ps(rows[a] + 8 * q, acc[a][q]);
            else _mm256_storeu_ps(yo + a * ldy + 8 * q, acc[a][q]);
          }
          if (kTail)
            for (int k = 0; k < rem; ++k) yo[a * ldy + k] = rows[a][k];
        }
      }
    }
  }
}

template <int R, int RS, int V>
void run(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, float* y,
         int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe) {
  constexpr int PX = 8 * V;
  int64_t p0 = pb;
  for (; p0 + PX <= pe; p0 += PX)
    tile<R, RS, V, false>(w, g, xq, bias, y, ldy, u0, u1, p0, PX);
  if (p0 < pe)
    tile<R, RS, V, true>(w, g, xq, bias, y, ldy, u0, u1, p0, static_cast<int>(pe - p0));
}

}  // namespace

#define SP_BSR_CONV(name, R, RS, V)                                                       \
  void name(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, \
            float* y, int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe) {     \
    run<R, RS, V>(w, g, xq, bias, y, ldy, u0, u1, pb, pe);                                \
  }
SP_BSR_CONV(spconv_bsr4x1_f32_16px_avx2, 4, 4, 2)
SP_BSR_CONV(spconv_bsr8x1_f32_8px_avx2, 8, 8, 1)
SP_BSR_CONV(spconv_bsr16x1_f32_8px_avx2, 16, 8, 1)
#undef SP_BSR_CONV

}  // namespace sparseprune
