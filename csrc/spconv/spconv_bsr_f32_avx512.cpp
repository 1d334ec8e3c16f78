// Direct sparse convolution over r x 1 block filters (BSR), AVX-512 (this file alone gets the
// AVX-512 flags). A block is one tap shared by r output channels, so each input vector loaded
// for it feeds r FMAs: the CSR kernel's one load per FMA (L1/L2 load-bound) becomes one load
// per r FMAs, FMA-bound. Per tile of 16 * V pixels and channel block, each block row keeps
// r x V accumulators (<= 16 zmm), loads the tap's V input vectors once, and broadcasts the
// block's r weights. The last tile is masked as in spconv_csr_f32_avx512.cpp.
#include <immintrin.h>

#include <algorithm>

#include "../kernels.h"

namespace sparseprune {
namespace {

template <int R, int V, bool kTail>
inline void tile(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias,
                 float* y, int64_t ldy, int64_t u0, int64_t u1, int64_t p0, int rem) {
  static_assert(R * V <= 16, "accumulators must fit the register file with room to spare");
  const float* val = w.values.data();
  const int32_t* off = g.offsets.data();
  __mmask16 m[V];
  for (int q = 0; q < V; ++q) {
    const int left = std::max(0, std::min(16, rem - 16 * q));
    m[q] = kTail ? static_cast<__mmask16>((1u << left) - 1) : static_cast<__mmask16>(0xffff);
  }
  auto load = [&](const float* p, int q) {
    return kTail ? _mm512_maskz_loadu_ps(m[q], p) : _mm512_loadu_ps(p);
  };
  const float* xp = xq + p0;
  const int64_t nb1 = g.nb + 1;
  for (int64_t b = 0; b < g.nb; ++b) {
    for (int64_t i = u0; i < u1; ++i) {
      float* yo = y + i * R * ldy + p0;
      __m512 acc[R][V];
      for (int a = 0; a < R; ++a)
        for (int q = 0; q < V; ++q)
          acc[a][q] = b == 0 ? _mm512_set1_ps(bias ? bias[i * R + a] : 0.f)
                             : load(yo + a * ldy + 16 * q, q);
      const int64_t je = g.blk[i * nb1 + b + 1];
      for (int64_t j = g.blk[i * nb1 + b]; j < je; ++j) {
        const float* x = xp + off[j];
        __m512 xv[V];
        for (int q = 0; q < V; ++q) xv[q] = load(x + 16 * q, q);
        const float* v = val + j * R;
        for (int a = 0; a < R; ++a) {
          const __m512 wa = _mm512_set1_ps(v[a]);
          for (int q = 0; q < V; ++q) acc[a][q] = _mm512_fmadd_ps(wa, xv[q], acc[a][q]);
        }
      }
      for (int a = 0; a < R; ++a)
        for (int q = 0; q < V; ++q) {
          if (kTail) _mm512_mask_storeu_ps(yo + a * ldy + 16 * q, m[q], acc[a][q]);
          else _mm512_storeu_ps(yo + a * ldy + 16 * q, acc[a][q]);
        }
    }
  }
}

template <int R, int V>
void run(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, float* y,
         int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe) {
  constexpr int PX = 16 * V;
  int64_t p0 = pb;
  for (; p0 + PX <= pe; p0 += PX) tile<R, V, false>(w, g, xq, bias, y, ldy, u0, u1, p0, PX);
  if (p0 < pe)
    tile<R, V, true>(w, g, xq, bias, y, ldy, u0, u1, p0, static_cast<int>(pe - p0));
}

}  // namespace

#define SP_BSR_CONV(name, R, V)                                                           \
  void name(const BsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, \
            float* y, int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe) {     \
    run<R, V>(w, g, xq, bias, y, ldy, u0, u1, pb, pe);                                    \
  }
SP_BSR_CONV(spconv_bsr4x1_f32_64px_avx512, 4, 4)
SP_BSR_CONV(spconv_bsr4x1_f32_32px_avx512, 4, 2)
SP_BSR_CONV(spconv_bsr8x1_f32_32px_avx512, 8, 2)
SP_BSR_CONV(spconv_bsr8x1_f32_16px_avx512, 8, 1)
SP_BSR_CONV(spconv_bsr16x1_f32_16px_avx512, 16, 1)
#undef SP_BSR_CONV

}  // namespace sparseprune
