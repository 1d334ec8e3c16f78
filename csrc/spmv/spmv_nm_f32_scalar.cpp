// SpMV (batch rows read directly) over the N:M tile layout, portable C++: the reference every
// CPU can run. One pass per batch row over the tile's entries; entry e of window w of lane r
// reads x at column w * win_cols + its nibble (always < cols, see formats/nm_weight.h).
#include <algorithm>

#include "../formats/nm_weight.h"
#include "../kernels.h"

namespace sparseprune {

void spmv_nm_f32_scalar(const NmWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                        const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1) {
  const int64_t per_tile = w.windows * w.epw * kNmTile;
  for (int64_t b = 0; b < nvalid; ++b, x += ldx, y += ldy) {
    for (int64_t t = u0; t < u1; ++t) {
      float acc[kNmTile] = {};
      const float* v = w.vals.data() + t * per_tile;
      const uint8_t* q = w.nib.data() + t * w.windows * w.ppw * kNmTile;
      for (int64_t wi = 0; wi < w.windows; ++wi, q += w.ppw * kNmTile) {
        const float* xs = x + wi * w.win_cols;
        for (int e = 0; e < w.epw; ++e, v += kNmTile) {
          const uint8_t* qe = q + (e / 2) * kNmTile;
          const int shift = (e % 2) * 4;
          for (int r = 0; r < kNmTile; ++r) acc[r] += v[r] * xs[(qe[r] >> shift) & 15];
        }
      }
      const int64_t o0 = t * kNmTile;
      const int nr = static_cast<int>(std::min<int64_t>(kNmTile, w.rows - o0));
      for (int r = 0; r < nr; ++r) y[o0 + r] = (bias ? bias[o0 + r] : 0.f) + acc[r];
    }
  }
}

}  // namespace sparseprune
