// Max pooling, portable C++ (any CPU): vertical max into the scratch row, scalar horizontal
// pass (pool/maxpool2d_rows.h).
#include "maxpool2d_rows.h"

namespace sparseprune {

void maxpool2d_f32_scalar(const PoolGeometry& g, const float* x, float* y, float* row,
                          int64_t p0, int64_t p1) {
  maxpool_planes(
      g, x, y, row, p0, p1,
      [](float* dst, const float* src, int64_t n) {
        for (int64_t i = 0; i < n; ++i) dst[i] = nanmax(dst[i], src[i]);
      },
      [](const PoolGeometry& geo, const float* r, float* yr) { hmax_scalar(geo, r, yr, 0); });
}

}  // namespace sparseprune
