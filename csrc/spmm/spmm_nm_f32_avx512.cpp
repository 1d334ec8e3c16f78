// SpMM over the N:M tile layout on activation panels of MR = 16, 32 or 64 batch rows, AVX-512
// F/BW/DQ/VL (this file alone is compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl
// -mavx2 -mfma).
//
// Each kept value is one broadcast and MR / 16 FMAs against the panel row of its column (the
// CSR/SELL panel scheme). All rows of an N:M tile have the same number of entries per window,
// so R rows run in lockstep with no padding: R * MR / 16 = 8 independent FMA chains. Cache-hot,
// this runs at ~1 zmm load + 1 FMA per cycle (the L1 load port is the limit: every FMA reads
// its own panel row). Columns are walked in K blocks whose panel slice stays in L1 while a row
// block of several tiles reuses it; per (tile, block) the nibble offsets are decoded once into
// panel offsets (the 32-row kernel reads them straight from the nibbles: DIRECT below). Cold, the weight streams from DRAM and the panel (up to 1 MiB) lives in L2/L3:
// both are software-prefetched one block ahead (measured 1.15-1.2x at 4096^2, batch 64).
// GCC 12's -W(maybe-)uninitialized fires inside the AVX-512 headers (_mm512_undefined_*, GCC
// PR105593); silenced here, before they are included, so -Wall stays useful for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "../common/broadcast_lane.h"
#include "../common/store_tile.h"
#include "../formats/nm_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

constexpr int kMaxBlockWindows = 16;  // bounds the decoded-offset scratch (16 x 16 x 16 int32)
// Bytes ahead in a tile's weight stream to prefetch (into L2: into L1 it evicted the panel).
constexpr int kWeightPrefetch = 2048;

inline void prefetch_l2(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T2);
}
inline void prefetch_l1(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// R bytes of nibbles (rows r..r+R-1 of one entry pair) in one scalar load.
template <int R>
inline uint64_t load_nibbles(const uint8_t* q) {
  if (R == 2) { uint16_t v; std::memcpy(&v, q, 2); return v; }
  if (R == 4) { uint32_t v; std::memcpy(&v, q, 4); return v; }
  uint64_t v; std::memcpy(&v, q, 8); return v;
}

// MR panel width, R rows in lockstep, BT tiles per row block, SLICE panel floats per K block
// (8-16 KiB: the slice, the row block's accumulators and the decoded offsets share L1).
//
// DIRECT: read the column offsets straight from the nibbles (no offset scratch): per entry
// pair one scalar load gives the R rows' offsets of both entries, and per entry one 128-bit
// load (R = 4) gives their weights, spread by in-lane shuffles. Per step of R nonzeros that is
// R * V panel loads and ~1.5 more, where the decoded path spends R offset loads and R broadcast
// loads: the load slots bound these kernels at <= 32 batch rows (Zen 4, random 2:4 masks,
// MiniLM's 384/1536-wide layers and 4096^2, 32 rows: 0.88-1.03x of SELL, was 0.68-0.83x).
// 128-column K blocks (4096 panel floats) measured better than 64 or 256 there.
template <int MR, int R, int BT, int SLICE, bool DIRECT>
void run(const NmWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t t0, int64_t t1) {
  constexpr int V = MR / 16;  // zmm per panel row
  constexpr int kShift = MR == 64 ? 6 : MR == 32 ? 5 : 4;  // column -> panel offset
  static_assert(R * V == 8 && kNmTile % R == 0, "8 FMA chains, whole row groups per tile");
  const int E = w.epw, P = w.ppw, wc = w.win_cols;
  const int64_t windows = w.windows;
  const int kw = DIRECT ? std::max(1, SLICE / (MR * wc))
                        : std::max(1, std::min(kMaxBlockWindows, SLICE / (MR * wc)));
  const int64_t tile_vals = windows * E * kNmTile, tile_nib = windows * P * kNmTile;
  alignas(64) float acc[BT * kNmTile][MR];
  // Decoded path: epw <= 15 entries per window
  alignas(64) int32_t off[DIRECT ? 16 : kMaxBlockWindows * 16 * kNmTile];

  for (int64_t tb = t0; tb < t1; tb += BT) {
    const int nt = static_cast<int>(std::min<int64_t>(BT, t1 - tb));
    for (int r = 0; r < nt * kNmTile; ++r)
      for (int c = 0; c < V; ++c) _mm512_store_ps(acc[r] + 16 * c, _mm512_setzero_ps());

    for (int64_t w0 = 0; w0 < windows; w0 += kw) {
      const int64_t w1 = std::min<int64_t>(windows, w0 + kw);
      // The next block's panel slice: its rows are read in random order, too late for the
      // hardware prefetcher.
      const int64_t c1 = std::min<int64_t>(w.cols, std::min<int64_t>(windows, w1 + kw) * wc);
      if (c1 > w1 * wc) prefetch_l1(panel + w1 * wc * MR, (c1 - w1 * wc) * MR * 4);
      for (int it = 0; it < nt; ++it) {
        const int64_t t = tb + it;
        const int nr = static_cast<int>(std::min<int64_t>(kNmTile, w.rows - t * kNmTile));
        const float* vb = w.vals.data() + t * tile_vals + w0 * E * kNmTile;
        const uint8_t* qb = w.nib.data() + t * tile_nib + w0 * P * kNmTile;
        const int64_t ne = (w1 - w0) * E;
        // Past the tile's end this prefetches the next tile's start: harmless.
        prefetch_l2(reinterpret_cast<const char*>(vb) + kWeightPrefetch, ne * kNmTile * 4);
        prefetch_l2(qb + kWeightPrefetch / 8, (w1 - w0) * P * kNmTile);
        if constexpr (!DIRECT) {
          // Decode: off[e * 16 + lane] = column * MR for the block's entries e.
          int32_t* d = off;
          for (int64_t wi = w0; wi < w1; ++wi, d += E * kNmTile) {
            const __m512i base = _mm512_set1_epi32(static_cast<int32_t>(wi * wc));
            for (int p = 0; p < P; ++p) {
              const __m512i b = _mm512_cvtepu8_epi32(_mm_load_si128(
                  reinterpret_cast<const __m128i*>(qb + ((wi - w0) * P + p) * kNmTile)));
              const __m512i lo = _mm512_and_si512(b, _mm512_set1_epi32(15));
              _mm512_store_si512(d + 2 * p * kNmTile,
                                 _mm512_slli_epi32(_mm512_add_epi32(lo, base), kShift));
              if (2 * p + 1 < E)
                _mm512_store_si512(
                    d + (2 * p + 1) * kNmTile,
                    _mm512_slli_epi32(_mm512_add_epi32(_mm512_srli_epi32(b, 4), base), kShift));
            }
          }
        }
        // Rows past `rows` in the last tile hold zeros: skip whole groups of them.
        for (int r0 = 0; r0 < nr; r0 += R) {
          float(*ac)[MR] = acc + it * kNmTile + r0;
          __m512 a[R][V];
          for (int i = 0; i < R; ++i)
            for (int c = 0; c < V; ++c) a[i][c] = _mm512_load_ps(ac[i] + 16 * c);
          const float* vv = vb + r0;
          if constexpr (DIRECT) {
            const uint8_t* qq = qb + r0;
            for (int64_t wi = w0; wi < w1; ++wi) {
              const float* pw = panel + wi * wc * MR;
              for (int p = 0; p < P; ++p, qq += kNmTile) {
                const uint64_t q = load_nibbles<R>(qq);
                for (int h = 0; h < 2 && 2 * p + h < E; ++h, vv += kNmTile) {
                  const __m512 v4 = R == 4 ? _mm512_broadcast_f32x4(_mm_loadu_ps(vv))
                                           : _mm512_setzero_ps();
                  for (int i = 0; i < R; ++i) {
                    const float* pp = pw + ((q >> (8 * i + 4 * h)) & 15u) * MR;
                    const __m512 wv = R == 4 ? broadcast_lane(v4, i) : _mm512_set1_ps(vv[i]);
                    for (int c = 0; c < V; ++c)
                      a[i][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(pp + 16 * c), a[i][c]);
                  }
                }
              }
            }
          } else {
            const int32_t* oo = off + r0;
            for (int64_t e = 0; e < ne; ++e, vv += kNmTile, oo += kNmTile) {
              for (int i = 0; i < R; ++i) {
                const __m512 wv = _mm512_set1_ps(vv[i]);
                const float* p = panel + oo[i];
                for (int c = 0; c < V; ++c)
                  a[i][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(p + 16 * c), a[i][c]);
              }
            }
          }
          for (int i = 0; i < R; ++i)
            for (int c = 0; c < V; ++c) _mm512_store_ps(ac[i] + 16 * c, a[i][c]);
        }
      }
    }
    // Batch row outer: each y row gets one contiguous run. Row-outer order would touch nvalid
    // lines ldy floats apart per output, which alias to one L1 set when ldy is a power of 2.
    const int64_t o0 = tb * kNmTile;
    const int nr = static_cast<int>(std::min<int64_t>(nt * kNmTile, w.rows - o0));
    store_tile_transposed(&acc[0][0], MR, nr, nvalid, bias ? bias + o0 : nullptr, y + o0, ldy);
  }
}

}  // namespace

void spmm_nm_f32_64x16_avx512(const NmWeight& w, const float* panel, int64_t nvalid,
                              int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                              int64_t u0, int64_t u1) {
  run<64, 2, 2, 4096, false>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

void spmm_nm_f32_32x16_avx512(const NmWeight& w, const float* panel, int64_t nvalid,
                              int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                              int64_t u0, int64_t u1) {
  run<32, 4, 4, 4096, true>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

void spmm_nm_f32_16x16_avx512(const NmWeight& w, const float* panel, int64_t nvalid,
                              int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                              int64_t u0, int64_t u1) {
  run<16, 8, 4, 2048, false>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

}  // namespace sparseprune
