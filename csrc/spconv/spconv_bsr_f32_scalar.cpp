// Direct sparse convolution over r x 1 block filters (BSR), portable C++: any r (<= 16), the
// reference the SIMD rows are tested against. Per 16-pixel tile each block row keeps r x 16
// sums; each block's tap run is read once for its r channels.
#include <algorithm>

#include "../kernels.h"

namespace sparseprune {

void spconv_bsr_f32_16px_scalar(const BsrWeight& w, const ConvGeometry& g, const float* xq,
                                const float* bias, float* y, int64_t ldy, int64_t u0,
                                int64_t u1, int64_t pb, int64_t pe) {
  constexpr int PX = 16;
  const int R = static_cast<int>(w.r);
  const float* val = w.values.data();
  const int32_t* off = g.offsets.data();
  const int64_t nb1 = g.nb + 1;
  for (int64_t p0 = pb; p0 < pe; p0 += PX) {
    const int n = static_cast<int>(std::min<int64_t>(PX, pe - p0));
    const float* xp = xq + p0;
    for (int64_t b = 0; b < g.nb; ++b) {
      for (int64_t i = u0; i < u1; ++i) {
        float acc[BsrWeight::kMaxBlock][PX];
        for (int a = 0; a < R; ++a) {
          const float* yo = y + (i * R + a) * ldy + p0;
          for (int k = 0; k < n; ++k) acc[a][k] = b == 0 ? (bias ? bias[i * R + a] : 0.f) : yo[k];
        }
        for (int64_t j = g.blk[i * nb1 + b]; j < g.blk[i * nb1 + b + 1]; ++j) {
          const float* x = xp + off[j];
          const float* v = val + j * R;
          for (int a = 0; a < R; ++a)
            for (int k = 0; k < n; ++k) acc[a][k] += v[a] * x[k];
        }
        for (int a = 0; a < R; ++a) {
          float* yo = y + (i * R + a) * ldy + p0;
          for (int k = 0; k < n; ++k) yo[k] = acc[a][k];
        }
      }
    }
  }
}

}  // namespace sparseprune
