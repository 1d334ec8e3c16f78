// SpMV (batch rows read directly) over the SELL-C layout, AVX2 + FMA (this file alone is
// compiled with -mavx2 -mfma). The 4 lockstep rows of a chunk are the 4 lanes of an xmm: per
// step one 16-byte value load, one 32-bit load of the 4 uint8 offsets, 4 scalar x loads folded
// into vinsertps (hardware gathers are slower than this on Zen 3/4), one FMA. The x slice of a
// k-block (kSellColBlock floats, 1 KiB) stays in L1.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/insert_avx.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

template <int kImm>
inline __m128 insert(__m128 a, const float* p) {
  return insert_ps_mem<kImm>(a, p);
}

inline __m128 gather4(const float* xs, const uint8_t* o) {
  uint32_t q;
  std::memcpy(&q, o, 4);
  __m128 a = _mm_load_ss(xs + (q & 0xff));
  a = insert<0x10>(a, xs + ((q >> 8) & 0xff));
  a = insert<0x20>(a, xs + ((q >> 16) & 0xff));
  return insert<0x30>(a, xs + (q >> 24));
}

}  // namespace

void spmv_sell_f32_avx2(const SellWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                        const float* bias, float* y, int64_t ldy, int64_t rb0, int64_t rb1) {
  static_assert(kSellChunk == 4, "one xmm lane per lockstep row");
  alignas(16) float acc[kSellRowBlock + 1];  // one spare row takes the padding slots
  for (int64_t b = 0; b < nvalid; ++b, x += ldx, y += ldy) {
    for (int64_t rb = rb0; rb < rb1; ++rb) {
      const int64_t r0 = rb * kSellRowBlock;
      const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
      std::fill(acc, acc + kSellRowBlock + 1, 0.f);
      for (int64_t kb = 0; kb < w.col_blocks; ++kb) {
        const float* xs = x + kb * kSellColBlock;
        const int64_t t = rb * w.col_blocks + kb;
        for (int64_t c = w.tile_chunk[t]; c < w.tile_chunk[t + 1]; ++c) {
          const float* v = w.values.data() + w.chunk_step[c] * kSellChunk;
          const uint8_t* o = w.offsets.data() + w.chunk_step[c] * kSellChunk;
          const float* vend = w.values.data() + w.chunk_step[c + 1] * kSellChunk;
          // Two accumulators: the FMA latency chain would otherwise bound short steps.
          __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
          for (; v + 2 * kSellChunk <= vend; v += 2 * kSellChunk, o += 2 * kSellChunk) {
            s0 = _mm_fmadd_ps(_mm_loadu_ps(v), gather4(xs, o), s0);
            s1 = _mm_fmadd_ps(_mm_loadu_ps(v + kSellChunk), gather4(xs, o + kSellChunk), s1);
          }
          if (v < vend) s0 = _mm_fmadd_ps(_mm_loadu_ps(v), gather4(xs, o), s0);
          alignas(16) float s[4];
          _mm_store_ps(s, _mm_add_ps(s0, s1));
          const int32_t* rows = &w.chunk_rows[c * kSellChunk];
          for (int i = 0; i < kSellChunk; ++i) acc[rows[i]] += s[i];
        }
      }
      for (int i = 0; i < nr; ++i) y[r0 + i] = (bias ? bias[r0 + i] : 0.f) + acc[i];
    }
  }
}

}  // namespace sparseprune
