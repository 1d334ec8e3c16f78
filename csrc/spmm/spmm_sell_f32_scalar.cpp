// SpMM over the SELL-C layout, portable C++: the reference every CPU can run.
#include <algorithm>

#include "../common/store_tile.h"
#include "../kernels.h"

namespace sparseprune {

void spmm_sell_f32_8x4_scalar(const SellWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                              const float* bias, float* y, int64_t ldy, int64_t rb0,
                              int64_t rb1) {
  constexpr int MR = 8;
  float acc[kSellRowBlock + 1][MR];
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    const int64_t r0 = rb * kSellRowBlock;
    const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
    for (auto& row : acc) std::fill(row, row + MR, 0.f);
    for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
      const float* pan = panel + kb * kSellColBlock * MR;
      const int64_t t = rb * w.col_blocks + kb;
      for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
        const int32_t* rows = &w.chunk_rows[c * kSellChunk];
        for (int64_t s = w.chunk_step[c]; s < w.chunk_step[c + 1]; ++s) {
          for (int i = 0; i < kSellChunk; ++i) {
            const float v = w.values[s * kSellChunk + i];
            const float* p = pan + w.offsets[s * kSellChunk + i] * MR;
            for (int r = 0; r < MR; ++r) acc[rows[i]][r] += v * p[r];
          }
        }
      }
    }
    store_tile_transposed(&acc[0][0], MR, nr, nvalid, bias ? bias + r0 : nullptr, y + r0, ldy);
  }
}

}  // namespace sparseprune
