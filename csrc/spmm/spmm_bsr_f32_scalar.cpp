// SpMM, W in BSR, activations in transposed panels of MR batch rows; portable C++.
// Each block value is one multiply-add against panel row (block_col * c + b), MR lanes wide: the
// compiler vectorizes the MR loop (SSE2 on baseline x86-64). Fast shapes get compile-time r, c
// so the block loops unroll; R = 0 / C = 0 instantiate the runtime-shape fallback.
#include <algorithm>

#include "../common/store_tile.h"
#include "../formats/bsr_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

template <int MR, int R, int C>
void run(const BsrWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t u0, int64_t u1) {
  const int64_t r = R ? R : w.r, c = C ? C : w.c;
  constexpr int kRows = R ? R : BsrWeight::kMaxBlock;
  const float* vals = w.values.data();
  const int32_t* bc = w.block_col.data();
  for (int64_t i = u0; i < u1; ++i) {
    float acc[kRows][MR] = {};
    const int64_t jf = w.full_end(i), j1 = w.block_row_ptr[i + 1];
    for (int64_t j = w.block_row_ptr[i]; j < j1; ++j) {
      // The edge block (j == jf) has only edge_c columns in the panel.
      const int64_t nb = j < jf ? c : w.edge_c;
      const float* v = vals + j * r * c;
      const float* p = panel + static_cast<int64_t>(bc[j]) * c * MR;
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t a = 0; a < r; ++a) {
          const float wv = v[a * c + b];
          for (int q = 0; q < MR; ++q) acc[a][q] += wv * p[b * MR + q];
        }
    }
    const int64_t o0 = i * r;
    const int64_t na = std::min(r, w.rows - o0);
    store_tile_transposed(&acc[0][0], MR, na, nvalid, bias ? bias + o0 : nullptr, y + o0, ldy);
  }
}

}  // namespace

void spmm_bsr_f32_8_scalar(const BsrWeight& w, const float* panel, int64_t nvalid,
                           int64_t /*ldx*/, const float* bias, float* y, int64_t ldy, int64_t u0,
                           int64_t u1) {
  const int64_t shape = w.r * 100 + w.c;
  switch (shape) {
    case 401: return run<8, 4, 1>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 801: return run<8, 8, 1>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 1601: return run<8, 16, 1>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 104: return run<8, 1, 4>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 404: return run<8, 4, 4>(w, panel, nvalid, bias, y, ldy, u0, u1);
    default: return run<8, 0, 0>(w, panel, nvalid, bias, y, ldy, u0, u1);
  }
}

}  // namespace sparseprune
