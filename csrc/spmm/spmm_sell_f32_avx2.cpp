// SpMM over the SELL-C layout, AVX2 + FMA (this file alone is compiled with -mavx2 -mfma).
// Per step: the 4 lockstep rows each broadcast one weight and FMA it into MR / 8 ymm accumulators
// against a panel row that sits in L1 (the tile's panel slice, kSellColBlock * MR floats): with
// MR = 16, 8 independent FMA chains and 16 loads per 4 nonzeros, none from L2. MR = 24 (12 FMA
// chains, 12 + 2 of the 16 ymm registers) serves 17-24 batch rows, e.g. one sentence's tokens,
// which a 32-row panel would run 25-47 % empty.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/store_tile.h"
#include "../kernels.h"

namespace sparseprune {

namespace {

// V ymm vectors per panel row (MR = 8 V). 4 lockstep rows x V accumulators = 4 V FMA chains.
template <int V>
void run(const SellWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t rb0, int64_t rb1) {
  constexpr int MR = 8 * V;
  static_assert(kSellChunk == 4, "the unrolled body below assumes 4 rows per chunk");
  // One spare row takes the padding slots of short chunks.
  alignas(32) float acc[kSellRowBlock + 1][MR];
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    const int64_t r0 = rb * kSellRowBlock;
    const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
    for (auto& row : acc)
      for (int c = 0; c < V; ++c) _mm256_store_ps(row + 8 * c, _mm256_setzero_ps());
    for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
      const float* pan = panel + kb * kSellColBlock * MR;
      const int64_t t = rb * w.col_blocks + kb;
      for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
        const int32_t* rows = &w.chunk_rows[c * kSellChunk];
        float* a[4] = {acc[rows[0]], acc[rows[1]], acc[rows[2]], acc[rows[3]]};
        __m256 x[4][V];
        for (int i = 0; i < 4; ++i)
          for (int q = 0; q < V; ++q) x[i][q] = _mm256_load_ps(a[i] + 8 * q);
        const float* v = w.values.data() + w.chunk_step[c] * kSellChunk;
        const uint8_t* o = w.offsets.data() + w.chunk_step[c] * kSellChunk;
        const float* vend = w.values.data() + w.chunk_step[c + 1] * kSellChunk;
        if (V == 1) {
          // One ymm per row gives only 4 FMA chains, too few to cover the FMA latency: odd
          // steps go to a second set of accumulators, summed after the chunk.
          __m256 z[4];
          for (int i = 0; i < 4; ++i) z[i] = _mm256_setzero_ps();
          for (; v + 2 * kSellChunk <= vend; v += 2 * kSellChunk, o += 2 * kSellChunk) {
            uint64_t o8;  // both steps' offsets in one load
            std::memcpy(&o8, o, 8);
            for (int i = 0; i < 4; ++i) {
              const __m256 w0 = _mm256_broadcast_ss(v + i);
              const __m256 w1 = _mm256_broadcast_ss(v + kSellChunk + i);
              const float* p0 = pan + ((o8 >> (8 * i)) & 0xffu) * MR;
              const float* p1 = pan + ((o8 >> (8 * (kSellChunk + i))) & 0xffu) * MR;
              x[i][0] = _mm256_fmadd_ps(w0, _mm256_load_ps(p0), x[i][0]);
              z[i] = _mm256_fmadd_ps(w1, _mm256_load_ps(p1), z[i]);
            }
          }
          for (int i = 0; i < 4; ++i) x[i][0] = _mm256_add_ps(x[i][0], z[i]);
        }
        for (; v < vend; v += kSellChunk, o += kSellChunk) {
          uint32_t o4;  // the step's 4 offsets in one load (see the AVX-512 kernel)
          std::memcpy(&o4, o, 4);
          for (int i = 0; i < 4; ++i) {
            const float* p = pan + ((o4 >> (8 * i)) & 0xffu) * MR;
            const __m256 wv = _mm256_broadcast_ss(v + i);
            for (int q = 0; q < V; ++q)
              x[i][q] = _mm256_fmadd_ps(wv, _mm256_load_ps(p + 8 * q), x[i][q]);
          }
        }
        // Padding slots all point at the spare row; real rows of a chunk are distinct.
        for (int i = 3; i >= 0; --i)
          for (int q = 0; q < V; ++q) _mm256_store_ps(a[i] + 8 * q, x[i][q]);
      }
    }
    store_tile_transposed(&acc[0][0], MR, nr, nvalid, bias ? bias + r0 : nullptr, y + r0, ldy);
  }
}

}  // namespace

void spmm_sell_f32_24x4_avx2(const SellWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                             const float* bias, float* y, int64_t ldy, int64_t rb0,
                             int64_t rb1) {
  run<3>(w, panel, nvalid, bias, y, ldy, rb0, rb1);
}

void spmm_sell_f32_16x4_avx2(const SellWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                             const float* bias, float* y, int64_t ldy, int64_t rb0,
                             int64_t rb1) {
  run<2>(w, panel, nvalid, bias, y, ldy, rb0, rb1);
}

void spmm_sell_f32_8x4_avx2(const SellWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                            const float* bias, float* y, int64_t ldy, int64_t rb0, int64_t rb1) {
  run<1>(w, panel, nvalid, bias, y, ldy, rb0, rb1);
}

}  // namespace sparseprune
