// SpMM, W in CSR, activations in transposed panels of MR batch rows; portable C++.
#include "../common/store_tile.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

template <int MR, typename Idx>
void run(const CsrWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t r0, int64_t r1) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  const float* v = w.values.data();
  constexpr int kTileRows = 16;  // outputs written out batch row by batch row (store_tile.h)
  float tile[kTileRows][MR];
  for (int64_t o = r0; o < r1; ++o) {
    float* acc = tile[(o - r0) % kTileRows];
    for (int r = 0; r < MR; ++r) acc[r] = 0.f;
    for (int64_t j = w.row_ptr[o]; j < w.row_ptr[o + 1]; ++j) {
      const float wv = v[j];
      const float* p = panel + static_cast<int64_t>(ci[j]) * MR;
      for (int r = 0; r < MR; ++r) acc[r] += wv * p[r];
    }
    const int64_t n = (o - r0) % kTileRows + 1;
    if (n == kTileRows || o + 1 == r1) {
      const int64_t o0 = o + 1 - n;
      store_tile_transposed(&tile[0][0], MR, n, nvalid, bias ? bias + o0 : nullptr, y + o0, ldy);
    }
  }
}

}  // namespace

void spmm_csr_f32_8x1_scalar(const CsrWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                             const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.index_bits == 16) {
    run<8, uint16_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  } else {
    run<8, int32_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  }
}

}  // namespace sparseprune
