// Direct sparse convolution over CSR filters, portable C++: the reference every SIMD row is
// tested against. 16-pixel tiles of plain loops (the compiler may vectorize them with the
// baseline ISA); the last tile only touches the pixels that exist.
#include <algorithm>

#include "../kernels.h"

namespace sparseprune {

void spconv_csr_f32_16px_scalar(const CsrWeight& w, const ConvGeometry& g, const float* xq,
                                const float* bias, float* y, int64_t ldy, int64_t o0,
                                int64_t o1, int64_t pb, int64_t pe) {
  constexpr int PX = 16;
  const float* val = w.values.data();
  const int32_t* off = g.offsets.data();
  const int64_t nb1 = g.nb + 1;
  for (int64_t p0 = pb; p0 < pe; p0 += PX) {
    const int n = static_cast<int>(std::min<int64_t>(PX, pe - p0));
    const float* xp = xq + p0;
    for (int64_t b = 0; b < g.nb; ++b) {
      for (int64_t o = o0; o < o1; ++o) {
        float* yo = y + o * ldy + p0;
        float acc[PX];
        for (int i = 0; i < n; ++i) acc[i] = b == 0 ? (bias ? bias[o] : 0.f) : yo[i];
        for (int64_t j = g.blk[o * nb1 + b]; j < g.blk[o * nb1 + b + 1]; ++j) {
          const float* x = xp + off[j];
          const float v = val[j];
          for (int i = 0; i < n; ++i) acc[i] += v * x[i];
        }
        for (int i = 0; i < n; ++i) yo[i] = acc[i];
      }
    }
  }
}

}  // namespace sparseprune
