// SpMM over the SELL-C layout, AVX-512 (this file alone is compiled with the AVX-512 flags).
// The AVX2 kernel's scheme with zmm panel rows: per step the 4 lockstep rows each broadcast one
// weight and FMA it into MR / 16 zmm accumulators against a panel row in L1. MR = 32: the
// tile's panel slice (kSellColBlock * 32 floats = 32 KiB) is the L1-sized slice the design's
// prototype found best at batch >= 64 on Zen 4 (MR = 32 with 256-column blocks), and 8 FMA
// chains cover the FMA latency.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/broadcast_lane.h"
#include "../common/store_tile.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

// Z zmm and Y (0 or 1) ymm vectors per panel row: MR = 16 Z + 8 Y. MR = 24 (one zmm + one ymm)
// serves 17-24 batch rows, e.g. one sentence's tokens: per nonzero it issues two vector loads
// where the AVX2 24-row kernel issues three, and does not run a 32-row panel 25-47 % empty
// (1.08-1.14x over the 32-row kernel at 20 rows on Zen 4; wider panels, 48 and 64 rows, were
// measured too: 48 beat 32 + 16 by 1.2-1.5x at 48 rows, 64 was level with 2 x 32).
// A 24-float row is 96 bytes, so the zmm half is read unaligned (half of them cross a line).
template <int Z, int Y>
void run(const SellWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t rb0, int64_t rb1) {
  constexpr int MR = 16 * Z + 8 * Y;
  static_assert(kSellChunk == 4, "the unrolled body below assumes 4 rows per chunk");
  static_assert(Y == 0 || Y == 1, "at most one ymm tail per panel row");
  alignas(64) float acc[kSellRowBlock + 1][MR];  // one spare row takes the padding slots
  for (int64_t rb = rb0; rb < rb1; ++rb) {
    const int64_t r0 = rb * kSellRowBlock;
    const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
    for (auto& row : acc) {
      for (int c = 0; c < Z; ++c) _mm512_storeu_ps(row + 16 * c, _mm512_setzero_ps());
      if (Y) _mm256_storeu_ps(row + 16 * Z, _mm256_setzero_ps());
    }
    for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
      const float* pan = panel + kb * kSellColBlock * MR;
      const int64_t t = rb * w.col_blocks + kb;
      for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
        const int32_t* rows = &w.chunk_rows[c * kSellChunk];
        float* a[4] = {acc[rows[0]], acc[rows[1]], acc[rows[2]], acc[rows[3]]};
        __m512 x[4][Z];
        __m256 xt[4];
        for (int i = 0; i < 4; ++i) {
          for (int q = 0; q < Z; ++q) x[i][q] = _mm512_loadu_ps(a[i] + 16 * q);
          xt[i] = Y ? _mm256_loadu_ps(a[i] + 16 * Z) : _mm256_setzero_ps();
        }
        const float* v = w.values.data() + w.chunk_step[c] * kSellChunk;
        const uint8_t* o = w.offsets.data() + w.chunk_step[c] * kSellChunk;
        const float* vend = w.values.data() + w.chunk_step[c + 1] * kSellChunk;
        for (; v < vend; v += kSellChunk, o += kSellChunk) {
          // The step's 4 offsets in one load: byte loads would take 4 of the load slots the
          // panel rows need (measured ~5 % at 90 %, batch 64).
          uint32_t o4;
          std::memcpy(&o4, o, 4);
          // The step's 4 weights in one load, spread to every lane by in-lane shuffles: four
          // broadcast loads took load slots from the panel rows (measured 3-10 % at 20-32
          // batch rows, 70-90 %; none at 64, where the FMAs dominate).
          const __m512 v4 = _mm512_broadcast_f32x4(_mm_loadu_ps(v));
          for (int i = 0; i < 4; ++i) {
            const float* p = pan + ((o4 >> (8 * i)) & 0xffu) * MR;
            const __m512 wv = broadcast_lane(v4, i);
            for (int q = 0; q < Z; ++q)
              x[i][q] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(p + 16 * q), x[i][q]);
            if (Y)
              xt[i] = _mm256_fmadd_ps(_mm512_castps512_ps256(wv), _mm256_load_ps(p + 16 * Z),
                                      xt[i]);
          }
        }
        // Padding slots all point at the spare row; real rows of a chunk are distinct.
        for (int i = 3; i >= 0; --i) {
          for (int q = 0; q < Z; ++q) _mm512_storeu_ps(a[i] + 16 * q, x[i][q]);
          if (Y) _mm256_storeu_ps(a[i] + 16 * Z, xt[i]);
        }
      }
    }
    store_tile_transposed(&acc[0][0], MR, nr, nvalid, bias ? bias + r0 : nullptr, y + r0, ldy);
  }
}

}  // namespace

void spmm_sell_f32_32x4_avx512(const SellWeight& w, const float* panel, int64_t nvalid,
                               int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                               int64_t rb0, int64_t rb1) {
  run<2, 0>(w, panel, nvalid, bias, y, ldy, rb0, rb1);
}

void spmm_sell_f32_24x4_avx512(const SellWeight& w, const float* panel, int64_t nvalid,
                               int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                               int64_t rb0, int64_t rb1) {
  run<1, 1>(w, panel, nvalid, bias, y, ldy, rb0, rb1);
}

}  // namespace sparseprune
