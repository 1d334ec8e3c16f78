// SpMM over the SELL-C layout, AVX2 + FMA (this file alone is compiled with -mavx2 -mfma).
// Per step: the 4 lockstep rows each broadcast one weight and FMA it into 2 ymm accumulators
// against a panel row that sits in L1 (the tile's 16 KiB panel slice): 8 independent FMA chains,
// 16 loads per 4 nonzeros, none from L2.
#include <immintrin.h>

#include <algorithm>

#include "spmm_sell_kernels.h"

namespace sparseprune {

void spmm_sell_f32_16x4_avx2(const SellPack& w, const float* panel, int64_t nvalid,
                             const float* bias, float* y, int64_t ldy, int64_t rb0,
                             int64_t rb1) {
  constexpr int MR = 16;
  static_assert(kSellChunk == 4, "the unrolled body below assumes 4 rows per chunk");
  // One spare row takes the padding slots of short chunks.
  alignas(32) float acc[kSellRowBlock + 1][MR];
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    const int64_t r0 = rb * kSellRowBlock;
    const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
    for (auto& row : acc) {
      _mm256_store_ps(row, _mm256_setzero_ps());
      _mm256_store_ps(row + 8, _mm256_setzero_ps());
    }
    for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
      const float* pan = panel + kb * kSellColBlock * MR;
      const int64_t t = rb * w.col_blocks + kb;
      for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
        const int32_t* rows = &w.chunk_rows[c * kSellChunk];
        float* a0 = acc[rows[0]];
        float* a1 = acc[rows[1]];
        float* a2 = acc[rows[2]];
        float* a3 = acc[rows[3]];
        __m256 x00 = _mm256_load_ps(a0), x01 = _mm256_load_ps(a0 + 8);
        __m256 x10 = _mm256_load_ps(a1), x11 = _mm256_load_ps(a1 + 8);
        __m256 x20 = _mm256_load_ps(a2), x21 = _mm256_load_ps(a2 + 8);
        __m256 x30 = _mm256_load_ps(a3), x31 = _mm256_load_ps(a3 + 8);
        const float* v = w.values.data() + w.chunk_step[c] * kSellChunk;
        const uint8_t* o = w.offsets.data() + w.chunk_step[c] * kSellChunk;
        const float* vend = w.values.data() + w.chunk_step[c + 1] * kSellChunk;
        for (; v < vend; v += kSellChunk, o += kSellChunk) {
          const float* p0 = pan + o[0] * MR;
          const float* p1 = pan + o[1] * MR;
          const float* p2 = pan + o[2] * MR;
          const float* p3 = pan + o[3] * MR;
          const __m256 w0 = _mm256_broadcast_ss(v), w1 = _mm256_broadcast_ss(v + 1);
          const __m256 w2 = _mm256_broadcast_ss(v + 2), w3 = _mm256_broadcast_ss(v + 3);
          x00 = _mm256_fmadd_ps(w0, _mm256_load_ps(p0), x00);
          x01 = _mm256_fmadd_ps(w0, _mm256_load_ps(p0 + 8), x01);
          x10 = _mm256_fmadd_ps(w1, _mm256_load_ps(p1), x10);
          x11 = _mm256_fmadd_ps(w1, _mm256_load_ps(p1 + 8), x11);
          x20 = _mm256_fmadd_ps(w2, _mm256_load_ps(p2), x20);
          x21 = _mm256_fmadd_ps(w2, _mm256_load_ps(p2 + 8), x21);
          x30 = _mm256_fmadd_ps(w3, _mm256_load_ps(p3), x30);
          x31 = _mm256_fmadd_ps(w3, _mm256_load_ps(p3 + 8), x31);
        }
        // Padding slots all point at the spare row; real rows of a chunk are distinct.
        _mm256_store_ps(a3, x30), _mm256_store_ps(a3 + 8, x31);
        _mm256_store_ps(a2, x20), _mm256_store_ps(a2 + 8, x21);
        _mm256_store_ps(a1, x10), _mm256_store_ps(a1 + 8, x11);
        _mm256_store_ps(a0, x00), _mm256_store_ps(a0 + 8, x01);
      }
    }
    alignas(32) float out[MR];
    for (int i = 0; i < nr; ++i) {
      const __m256 b = _mm256_set1_ps(bias ? bias[r0 + i] : 0.f);
      _mm256_store_ps(out, _mm256_add_ps(_mm256_load_ps(acc[i]), b));
      _mm256_store_ps(out + 8, _mm256_add_ps(_mm256_load_ps(acc[i] + 8), b));
      for (int64_t r = 0; r < nvalid; ++r) y[r * ldy + r0 + i] = out[r];
    }
  }
}

}  // namespace sparseprune
