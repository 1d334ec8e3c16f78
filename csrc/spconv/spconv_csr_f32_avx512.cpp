// Direct sparse convolution over CSR filters, AVX-512 (this file alone gets the AVX-512 flags).
// Per tile of 16 * V output pixels and per channel block, each output channel walks its kept
// taps: one broadcast weight, V unaligned loads of the shifted input run and V FMAs, into two
// accumulator sets taken by alternate taps (2 * V independent FMA chains cover the latency).
// The channel blocks keep the tile's input slice in L1 (conv_geometry.cpp). The last, partial
// tile uses masked loads and stores, so nothing past the last pixel is read or written.
// Rows: 128, 64 and 32 pixels (the dispatcher picks by how little of the last tile is wasted).
#include <immintrin.h>

#include <algorithm>

#include "../kernels.h"

namespace sparseprune {
namespace {

template <int V, bool kTail>
inline void tile(const CsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias,
                 float* y, int64_t ldy, int64_t o0, int64_t o1, int64_t p0, int rem) {
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
    for (int64_t o = o0; o < o1; ++o) {
      float* yo = y + o * ldy + p0;
      __m512 a[V], c[V];
      for (int q = 0; q < V; ++q) {
        a[q] = b == 0 ? _mm512_set1_ps(bias ? bias[o] : 0.f) : load(yo + 16 * q, q);
        c[q] = _mm512_setzero_ps();
      }
      int64_t j = g.blk[o * nb1 + b];
      const int64_t je = g.blk[o * nb1 + b + 1];
      for (; j + 1 < je; j += 2) {
        const float* x0 = xp + off[j];
        const float* x1 = xp + off[j + 1];
        const __m512 w0 = _mm512_set1_ps(val[j]), w1 = _mm512_set1_ps(val[j + 1]);
        for (int q = 0; q < V; ++q) {
          a[q] = _mm512_fmadd_ps(w0, load(x0 + 16 * q, q), a[q]);
          c[q] = _mm512_fmadd_ps(w1, load(x1 + 16 * q, q), c[q]);
        }
      }
      if (j < je) {
        const float* x0 = xp + off[j];
        const __m512 w0 = _mm512_set1_ps(val[j]);
        for (int q = 0; q < V; ++q) a[q] = _mm512_fmadd_ps(w0, load(x0 + 16 * q, q), a[q]);
      }
      for (int q = 0; q < V; ++q) {
        const __m512 r = _mm512_add_ps(a[q], c[q]);
        if (kTail) _mm512_mask_storeu_ps(yo + 16 * q, m[q], r);
        else _mm512_storeu_ps(yo + 16 * q, r);
      }
    }
  }
}

template <int V>
void run(const CsrWeight& w, const ConvGeometry& g, const float* xq, const float* bias, float* y,
         int64_t ldy, int64_t o0, int64_t o1, int64_t pb, int64_t pe) {
  constexpr int PX = 16 * V;
  int64_t p0 = pb;
  for (; p0 + PX <= pe; p0 += PX) tile<V, false>(w, g, xq, bias, y, ldy, o0, o1, p0, PX);
  if (p0 < pe)
    tile<V, true>(w, g, xq, bias, y, ldy, o0, o1, p0, static_cast<int>(pe - p0));
}

}  // namespace

void spconv_csr_f32_128px_avx512(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                                 const float* bias, float* y, int64_t ldy, int64_t o0,
                                 int64_t o1, int64_t pb, int64_t pe) {
  run<8>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

void spconv_csr_f32_64px_avx512(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                                const float* bias, float* y, int64_t ldy, int64_t o0,
                                int64_t o1, int64_t pb, int64_t pe) {
  run<4>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

void spconv_csr_f32_32px_avx512(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                                const float* bias, float* y, int64_t ldy, int64_t o0,
                                int64_t o1, int64_t pb, int64_t pe) {
  run<2>(w, g, xq, bias, y, ldy, o0, o1, pb, pe);
}

}  // namespace sparseprune
