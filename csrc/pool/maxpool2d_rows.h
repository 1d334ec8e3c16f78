// The parts every max-pooling variant shares (included by pool/maxpool2d_f32_*.cpp, each
// compiled for its own ISA): the NaN-propagating max, and the plane walk that fills the scratch
// row with the vertical max and hands it to the variant's horizontal pass.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>

#include "pool_fn.h"

namespace sparseprune {
// Internal linkage: each ISA's file gets its own copy (an inline function shared across files
// compiled with different -m flags could be linked as the AVX2 copy into the scalar path).
namespace {

// max as torch's pooling computes it: NaN wins.
inline float nanmax(float m, float v) { return (v > m || v != v) ? v : m; }

// Scalar horizontal pass from `from` on: y[ow] = max_j row[ow * sw + j * dw].
inline void hmax_scalar(const PoolGeometry& g, const float* row, float* y, int64_t from) {
  for (int64_t ow = from; ow < g.out_w; ++ow) {
    const float* r = row + ow * g.stride_w;
    float m = r[0];
    for (int64_t j = 1; j < g.kw; ++j) m = nanmax(m, r[j * g.dil_w]);
    y[ow] = m;
  }
}

// Walks planes [p0, p1): per output row, `vmax(dst, src, n)` folds one input row into the
// scratch row (dst = nanmax(dst, src) over n floats), `hmax(g, row, y_row)` reduces it.
template <class VMax, class HMax>
void maxpool_planes(const PoolGeometry& g, const float* x, float* y, float* row, int64_t p0,
                    int64_t p1, VMax vmax, HMax hmax) {
  constexpr float kLow = -std::numeric_limits<float>::infinity();
  const int64_t n = g.scratch();
  float* inner = row + g.pad_w;  // row[pad_w + w] holds input column w
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = x + p * g.height * g.width;
    float* yp = y + p * g.out_h * g.out_w;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      // Padding is -inf: a max over it is the max over the window's valid part (torch's
      // shape rules give every window at least one valid element).
      std::fill(row, row + n, kLow);
      const int64_t h0 = oh * g.stride_h - g.pad_h;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = h0 + i * g.dil_h;
        if (ih >= 0 && ih < g.height) vmax(inner, xp + ih * g.width, g.width);
      }
      hmax(g, row, yp + oh * g.out_w);
    }
  }
}

}  // namespace
}  // namespace sparseprune
