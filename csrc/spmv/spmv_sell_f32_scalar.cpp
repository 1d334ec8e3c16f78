// SpMV (batch rows read directly) over the SELL-C layout, portable C++: the reference every CPU
// can run. A SELL-C weight is the only copy of an unstructured layer, so it needs a batch-1 path.
#include <algorithm>

#include "../kernels.h"

namespace sparseprune {

void spmv_sell_f32_scalar(const SellWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                          const float* bias, float* y, int64_t ldy, int64_t rb0, int64_t rb1) {
  float acc[kSellRowBlock + 1];  // one spare row takes the padding slots of short chunks
  for (int64_t b = 0; b < nvalid; ++b, x += ldx, y += ldy) {
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      const int64_t r0 = rb * kSellRowBlock;
      const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
      std::fill(acc, acc + kSellRowBlock + 1, 0.f);
      for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
        const float* xs = x + kb * kSellColBlock;
        const int64_t t = rb * w.col_blocks + kb;
        for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
          float s[kSellChunk] = {};
          for (int64_t st = w.chunk_step[c]; st < w.chunk_step[c + 1]; ++st)
            for (int i = 0; i < kSellChunk; ++i)
              s[i] += w.values[st * kSellChunk + i] * xs[w.offsets[st * kSellChunk + i]];
          for (int i = 0; i < kSellChunk; ++i) acc[w.chunk_rows[c * kSellChunk + i]] += s[i];
        }
      }
      for (int i = 0; i < nr; ++i) y[r0 + i] = (bias ? bias[r0 + i] : 0.f) + acc[i];
    }
  }
}

}  // namespace sparseprune
