// SpMM over the N:M tile layout on activation panels of MR = 8 batch rows, portable C++: the
// reference every CPU can run. Each kept value is one multiply-add into 8 panel lanes; the
// inner 8-lane loop is what a compiler vectorizes even without ISA flags.
#include <algorithm>

#include "../formats/nm_weight.h"
#include "../kernels.h"

namespace sparseprune {

void spmm_nm_f32_8x16_scalar(const NmWeight& w, const float* panel, int64_t nvalid,
                             int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                             int64_t u0, int64_t u1) {
  constexpr int MR = 8;
  const int64_t per_tile = w.windows * w.epw * kNmTile;
  for (int64_t t = u0; t < u1; ++t) {
    const int64_t o0 = t * kNmTile;
    const int nr = static_cast<int>(std::min<int64_t>(kNmTile, w.rows - o0));
    const float* vt = w.vals.data() + t * per_tile;
    const uint8_t* qt = w.nib.data() + t * w.windows * w.ppw * kNmTile;
    for (int r = 0; r < nr; ++r) {
      float acc[MR] = {};
      const float* v = vt + r;
      for (int64_t wi = 0; wi < w.windows; ++wi) {
        const uint8_t* q = qt + wi * w.ppw * kNmTile + r;
        const float* pan = panel + wi * w.win_cols * MR;
        for (int e = 0; e < w.epw; ++e, v += kNmTile) {
          const int off = (q[(e / 2) * kNmTile] >> ((e % 2) * 4)) & 15;
          const float* p = pan + off * MR;
          for (int i = 0; i < MR; ++i) acc[i] += *v * p[i];
        }
      }
      const float bv = bias ? bias[o0 + r] : 0.f;
      for (int64_t i = 0; i < nvalid; ++i) y[i * ldy + o0 + r] = bv + acc[i];
    }
  }
}

}  // namespace sparseprune
