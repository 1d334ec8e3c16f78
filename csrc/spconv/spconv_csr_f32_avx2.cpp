// Direct sparse convolution over CSR filters, AVX2 + FMA (this file alone gets -mavx2 -mfma).
// The AVX-512 kernel's scheme (spconv_csr_f32_avx512.cpp) with ymm pixel vectors: 64-pixel
// tiles use one set of 8 accumulators (16 ymm registers leave no room for two), 32- and
// 16-pixel tiles two sets taken by alternate taps. The last, partial tile reads the prepared
// input with plain loads (its buffer has >= 64 floats of slack past the last plane: the extra
// lanes compute values nobody stores) and goes through a stack row for y: vmaskmovps stores are
// microcoded on AMD cores (Zen 1: the 64-pixel row ran a 7 x 7 output 2.3x slower than the
// 16-pixel one, whose last tile is a quarter of the work). Only the direct path (x itself, no
// slack) keeps masked input loads.
#include <immintrin.h>

#include <algorithm>

#include "../kernels.h"

namespace sparseprune {
namespace {

// kTail: the last tile, rem < 8 V pixels (y through a stack row); kMaskIn: its input loads
// are masked too (the direct path).
template <int V, int S, bool kTail, bool kMaskIn>
inline void tile(const CsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias,
                 float* y, int64_t ldy, int64_t o0, int64_t o1, int64_t p0, int rem) {
  const float* val = w.values.data();
  const int32_t* off = g.offsets.data();
  __m256i m[V];
  for (int q = 0; q < V; ++q) {
    const int left = std::max(0, std::min(8, rem - 8 * q));
    m[q] = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  auto load = [&](const float* p, int q) {
    return kMaskIn ? _mm256_maskload_ps(p, m[q]) : _mm256_loadu_ps(p);
  };
  alignas(32) float row[8 * V] = {};  // the tail tile's y pixels
  const float* xp = xq + p0;
  const int64_t nb1 = g.nb + 1;
  for (int64_t b = 0; b < g.nb; ++b) {
    for (int64_t o = o0; o < o1; ++o) {
      float* yo = y + o * ldy + p0;
      __m256 a[S][V];
      if (kTail && b > 0)
        for (int i = 0; i < rem; ++i) row[i] = yo[i];
      for (int q = 0; q < V; ++q) {
        a[0][q] = b == 0 ? _mm256_set1_ps(bias ? bias[o] : 0.f)
                  : kTail ? _mm256_load_ps(row + 8 * q) : _mm256_loadu_ps(yo + 8 * q);
        for (int t = 1; t < S; ++t) a[t][q] = _mm256_setzero_ps();
      }
      int64_t j = g.blk[o * nb1 + b];
      const int64_t je = g.blk[o * nb1 + b + 1];
      for (; j + S <= je; j += S) {
        for (int t = 0; t < S; ++t) {
          const float* xt = xp + off[j + t];
          const __m256 wt = _mm256_set1_ps(val[j + t]);
          for (int q = 0; q < V; ++q) a[t][q] = _mm256_fmadd_ps(wt, load(xt + 8 * q, q), a[t][q]);
        }
      }
      for (; j < je; ++j) {
        const float* x0 = xp + off[j];
        const __m256 w0 = _mm256_set1_ps(val[j]);
        for (int q = 0; q < V; ++q) a[0][q] = _mm256_fmadd_ps(w0, load(x0 + 8 * q, q), a[0][q]);
      }
      for (int q = 0; q < V; ++q) {
        __m256 r = a[0][q];
        for (int t = 1; t < S; ++t) r = _mm256_add_ps(r, a[t][q]);
        if (kTail) _mm256_store_ps(row + 8 * q, r);
        else _mm256_storeu_ps(yo + 8 * q, r);
      }
      if (kTail)
        for (int i = 0; i < rem; ++i) yo[i] = row[i];
    }
  }
}

template <int V, int S>
void run(const CsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, float* y,
         int64_t ldy, int64_t o0, int64_t o1, int64_t pb, int64_t pe) {
  constexpr int PX = 8 * V;
  int64_t p0 = pb;
  for (; p0 + PX <= pe; p0 += PX)
    tile<V, S, false, false>(w, g, xq, bias, y, ldy, o0, o1, p0, PX);
  if (p0 < pe) {
    const int rem = static_cast<int>(pe - p0);
    if (g.direct) tile<V, S, true, true>(w, g, xq, bias, y, ldy, o0, o1, p0, rem);
    else tile<V, S, true, false>(w, g, xq, bias, y, ldy, o0, o1, p0, rem);
  }
}

}  // namespace

void spconv_csr_f32_64px_avx2(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                              const float* bias, float* y, int64_t ldy, int64_t o0,
                              int64_t o1, int64_t pb, int64_t pe) {
  run<8, 1>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

void spconv_csr_f32_32px_avx2(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                              const float* bias, float* y, int64_t ldy, int64_t o0,
                              int64_t o1, int64_t pb, int64_t pe) {
  run<4, 2>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

void spconv_csr_f32_16px_avx2(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                              const float* bias, float* y, int64_t ldy, int64_t o0,
                              int64_t o1, int64_t pb, int64_t pe) {
  run<2, 2>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

}  // namespace sparseprune
