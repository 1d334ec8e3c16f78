// SpMM over the N:M tile layout on activation panels of MR = 16 or 32 batch rows, AVX-512
// F/BW/DQ/VL (this file alone is compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl
// -mavx2 -mfma).
//
// Each kept value is one broadcast and MR / 16 FMAs against the panel row of its column (the
// CSR/SELL panel scheme). All rows of an N:M tile have the same number of entries per window,
// so R rows run in lockstep with no padding: R * MR / 16 = 8 independent FMA chains. Columns
// are walked in K blocks whose panel slice stays in L1 while the 16 rows of the tile reuse it;
// per block, the tile's nibble offsets are decoded once (vector code) into panel offsets.
// GCC 12's -W(maybe-)uninitialized fires inside the AVX-512 headers (_mm512_undefined_*, GCC
// PR105593); silenced here, before they are included, so -Wall stays useful for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "../formats/nm_weight.h"

namespace sparseprune {
namespace {

// Panel slice per K block: 8 KiB leaves L1 room for the decoded offsets, the tile's values and
// the accumulators.
constexpr int kSliceFloats = 2048;
constexpr int kMaxBlockWindows = 16;
#ifndef BT
#define BT 4
#endif
constexpr int kBlockTiles = BT;  // bounds the decoded-offset scratch (16 x 16 x 16 int32)

template <int MR, int R>
void run(const NmWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t t0, int64_t t1) {
  constexpr int V = MR / 16;  // zmm per panel row
  constexpr int kShift = MR == 32 ? 5 : 4;  // column -> panel offset
  static_assert(R * V == 8 && kNmTile % R == 0, "8 FMA chains, whole row groups per tile");
  const int E = w.epw, P = w.ppw, wc = w.win_cols;
  const int64_t windows = w.windows;
  const int kw = std::max(1, std::min(kMaxBlockWindows, kSliceFloats / (MR * wc)));
  const int64_t tile_vals = windows * E * kNmTile, tile_nib = windows * P * kNmTile;
  alignas(64) float acc[kBlockTiles * kNmTile][MR];
  alignas(64) int32_t off[kMaxBlockWindows * 16 * kNmTile];  // epw <= 15 entries per window

  for (int64_t tb = t0; tb < t1; tb += kBlockTiles) {
    const int nt = static_cast<int>(std::min<int64_t>(kBlockTiles, t1 - tb));
    for (int r = 0; r < nt * kNmTile; ++r)
      for (int c = 0; c < V; ++c) _mm512_store_ps(acc[r] + 16 * c, _mm512_setzero_ps());

    for (int64_t w0 = 0; w0 < windows; w0 += kw) {
      const int64_t w1 = std::min<int64_t>(windows, w0 + kw);
#ifndef PPF
#define PPF 1
#endif
      if (PPF) {
        const int64_t c1 = std::min<int64_t>(w.cols, std::min<int64_t>(windows, w1 + kw) * wc);
        const char* pp = reinterpret_cast<const char*>(panel + w1 * wc * MR);
        for (int64_t b = 0; b < (c1 - w1 * wc) * MR * 4; b += 64) _mm_prefetch(pp + b, _MM_HINT_T0);
      }
      for (int it = 0; it < nt; ++it) {
        const int64_t t = tb + it;
        const int nr = static_cast<int>(std::min<int64_t>(kNmTile, w.rows - t * kNmTile));
        const float* vt = w.vals.data() + t * tile_vals;
        const uint8_t* qt = w.nib.data() + t * tile_nib;
        // Decode: off[e * 16 + lane] = column * MR for the block's entries e.
        int32_t* d = off;
        for (int64_t wi = w0; wi < w1; ++wi, d += E * kNmTile) {
          const __m512i base = _mm512_set1_epi32(static_cast<int32_t>(wi * wc));
          for (int p = 0; p < P; ++p) {
            const __m512i b = _mm512_cvtepu8_epi32(
                _mm_load_si128(reinterpret_cast<const __m128i*>(qt + (wi * P + p) * kNmTile)));
            const __m512i lo = _mm512_and_si512(b, _mm512_set1_epi32(15));
            _mm512_store_si512(d + 2 * p * kNmTile,
                               _mm512_slli_epi32(_mm512_add_epi32(lo, base), kShift));
            if (2 * p + 1 < E)
              _mm512_store_si512(d + (2 * p + 1) * kNmTile,
                                 _mm512_slli_epi32(_mm512_add_epi32(_mm512_srli_epi32(b, 4), base),
                                                   kShift));
          }
        }
        const int64_t ne = (w1 - w0) * E;
        const float* vb = vt + w0 * E * kNmTile;
#ifndef PFD
#define PFD 8192
#endif
#ifndef PFH
#define PFH _MM_HINT_T0
#endif
        if (PFD > 0) {
          const char* pv = reinterpret_cast<const char*>(vb) + PFD;
          for (int64_t b = 0; b < ne * kNmTile * 4; b += 64) _mm_prefetch(pv + b, PFH);
          const char* pq = reinterpret_cast<const char*>(qt + w0 * P * kNmTile) + PFD / 8;
          for (int64_t b = 0; b < (w1 - w0) * P * kNmTile; b += 64) _mm_prefetch(pq + b, PFH);
        }
        // Rows past `rows` in the last tile hold zeros: skip whole groups of them.
        for (int r0 = 0; r0 < nr; r0 += R) {
          float(*ac)[MR] = acc + it * kNmTile + r0;
          __m512 a[R][V];
          for (int i = 0; i < R; ++i)
            for (int c = 0; c < V; ++c) a[i][c] = _mm512_load_ps(ac[i] + 16 * c);
          const float* vv = vb + r0;
          const int32_t* oo = off + r0;
          for (int64_t e = 0; e < ne; ++e, vv += kNmTile, oo += kNmTile) {
            for (int i = 0; i < R; ++i) {
              const __m512 wv = _mm512_set1_ps(vv[i]);
              const float* p = panel + oo[i];
              for (int c = 0; c < V; ++c)
                a[i][c] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(p + 16 * c), a[i][c]);
            }
          }
          for (int i = 0; i < R; ++i)
            for (int c = 0; c < V; ++c) _mm512_store_ps(ac[i] + 16 * c, a[i][c]);
        }
      }
    }
    // y is [batch, rows] row-major: a panel's outputs for one row are a strided column.
    const int64_t o0 = tb * kNmTile;
    const int nr = static_cast<int>(std::min<int64_t>(nt * kNmTile, w.rows - o0));
    // Batch row outer: each y row gets one contiguous run. Row-outer order would hit nvalid
    // lines ldy floats apart per output, which alias to one L1 set when ldy is a power of 2.
    for (int64_t i = 0; i < nvalid; ++i) {
      float* yi = y + i * ldy + o0;
      for (int r = 0; r < nr; ++r) yi[r] = acc[r][i] + (bias ? bias[o0 + r] : 0.f);
    }
  }
}

}  // namespace

void spmm_nm_f32_32x16_avx512(const NmWeight& w, const float* panel, int64_t nvalid,
                              int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                              int64_t u0, int64_t u1) {
  run<32, 4>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

void spmm_nm_f32_16x16_avx512(const NmWeight& w, const float* panel, int64_t nvalid,
                              int64_t /*ldx*/, const float* bias, float* y, int64_t ldy,
                              int64_t u0, int64_t u1) {
  run<16, 8>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

}  // namespace sparseprune
