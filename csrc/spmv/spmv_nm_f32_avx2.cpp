// SpMV (batch rows read directly) over the N:M tile layout, AVX2 + FMA (this file alone is
// compiled with -mavx2 -mfma).
//
// A 16-row tile is two ymm of lanes (rows 0-7, 8-15). Per window (16 / m whole groups, <= 16 x
// floats) the x slice is loaded once as two ymm halves; vpermps picks each lane's input from one
// half (it reads only the low 3 bits of an index). When m divides 8 (2:4, 1:4, 4:8) every group
// lies in one half, known at compile time, so one permute per 8 kept values. Other shapes
// permute both halves and blend on bit 3 of the offset. One vpmovzxbd of 8 nibble bytes gives
// the indices of two entries (a shift exposes the high nibble): the weight streams at 4.5 B per
// kept value.
#include <immintrin.h>

#include <algorithm>

#include "../formats/nm_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

constexpr int kMaxNb = 3;  // batch rows per pass over W that fit in 16 ymm registers

// x[idx] for lanes whose offset may fall in either half of the 16-float window.
inline __m256 pick_any(__m256 lo, __m256 hi, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// kN, kM: the shape when known at compile time (the hot 2:4, 1:4, 4:8), else 0 = read from w.
template <int kN, int kM, int NB>
void run(const NmWeight& w, const float* x, int64_t ldx, const float* bias, float* y,
         int64_t ldy, int64_t t0, int64_t t1) {
  constexpr bool kHalves = kM != 0 && 8 % kM == 0;  // each group inside one 8-float half
  // A core streams DRAM at ~13 GB/s along one sequential stream but ~19-20 GB/s along 4-8
  // (measured, Zen 4): each tile is walked as S segments of windows in lockstep, as many as
  // the 16 ymm registers allow.
  constexpr int S = NB == 1 ? 4 : 2;
  const int n = kN ? kN : static_cast<int>(w.n);
  const int m = kM ? kM : static_cast<int>(w.m);
  const int wc = (16 / m) * m, E = (16 / m) * n, P = (E + 1) / 2;
  const int64_t windows = w.windows;
  // Windows whose 16-float load stays inside x. The others (at most 2, as win_cols >= 9) read
  // a zero-padded copy of the columns from the first of them on, made once per call.
  const int64_t nfull = w.cols >= 16 ? std::min<int64_t>(windows, (w.cols - 16) / wc + 1) : 0;
  alignas(32) float xt[NB][32];  // (2 - 1) * 16 + 16 floats cover both
  if (nfull < windows) {
    const int64_t c0 = nfull * wc;
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 32; ++i) xt[b][i] = c0 + i < w.cols ? x[b * ldx + c0 + i] : 0.f;
  }
  const int64_t tile_vals = windows * E * kNmTile, tile_nib = windows * P * kNmTile;

  for (int64_t t = t0; t < t1; ++t) {
    const float* vt = w.vals.data() + t * tile_vals;
    const uint8_t* qt = w.nib.data() + t * tile_nib;
    __m256 a[S][NB][2];  // [segment][batch row][lane half]: 6 to 12 FMA chains
    for (int s = 0; s < S; ++s)
      for (int b = 0; b < NB; ++b) a[s][b][0] = a[s][b][1] = _mm256_setzero_ps();
    auto window = [&](int64_t wi, __m256 (&acc)[NB][2]) {
      const float* v = vt + wi * E * kNmTile;
      const uint8_t* q = qt + wi * P * kNmTile;
      __m256 xl[NB], xh[NB];
      for (int b = 0; b < NB; ++b) {
        const float* xs = wi < nfull ? x + b * ldx + wi * wc : xt[b] + (wi - nfull) * wc;
        xl[b] = _mm256_loadu_ps(xs);
        xh[b] = _mm256_loadu_ps(xs + 8);
      }
      // One entry (e: its index in the window), both lane halves, all batch rows.
      auto entry = [&](int e, __m256i i_lo, __m256i i_hi) {
        const __m256 v0 = _mm256_load_ps(v), v1 = _mm256_load_ps(v + 8);
        v += kNmTile;
        const bool upper = ((e / n) * m) >= 8;  // constant once the loop is unrolled
        for (int b = 0; b < NB; ++b) {
          __m256 p0, p1;
          if (kHalves) {
            const __m256 xs = upper ? xh[b] : xl[b];
            p0 = _mm256_permutevar8x32_ps(xs, i_lo);
            p1 = _mm256_permutevar8x32_ps(xs, i_hi);
          } else {
            p0 = pick_any(xl[b], xh[b], i_lo);
            p1 = pick_any(xl[b], xh[b], i_hi);
          }
          acc[b][0] = _mm256_fmadd_ps(v0, p0, acc[b][0]);
          acc[b][1] = _mm256_fmadd_ps(v1, p1, acc[b][1]);
        }
      };
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p, q += kNmTile) {
        const __m256i l =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
        const __m256i h =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
        entry(2 * p, l, h);
        if (2 * p + 1 < E) entry(2 * p + 1, _mm256_srli_epi32(l, 4), _mm256_srli_epi32(h, 4));
      }
    };
    // The tile's windows as S interleaved segments: S concurrent streams per array.
    const int64_t seg = windows / S;
    for (int64_t i = 0; i < seg; ++i)
      for (int s = 0; s < S; ++s) window(s * seg + i, a[s]);
    for (int64_t wi = S * seg; wi < windows; ++wi) window(wi, a[0]);

    const int64_t o0 = t * kNmTile;
    const int64_t nr = std::min<int64_t>(kNmTile, w.rows - o0);
    alignas(32) float bv[kNmTile] = {}, out[kNmTile];
    if (bias)
      for (int64_t r = 0; r < nr; ++r) bv[r] = bias[o0 + r];
    for (int b = 0; b < NB; ++b) {
      for (int h = 0; h < 2; ++h) {
        __m256 s = a[0][b][h];
        for (int g = 1; g < S; ++g) s = _mm256_add_ps(s, a[g][b][h]);
        _mm256_store_ps(out + 8 * h, _mm256_add_ps(s, _mm256_load_ps(bv + 8 * h)));
      }
      float* yb = y + b * ldy + o0;
      if (nr == kNmTile) {
        _mm256_storeu_ps(yb, _mm256_load_ps(out));
        _mm256_storeu_ps(yb + 8, _mm256_load_ps(out + 8));
      } else {
        for (int64_t r = 0; r < nr; ++r) yb[r] = out[r];
      }
    }
  }
}

template <int kN, int kM>
void run_batch(const NmWeight& w, const float* x, int64_t nvalid, int64_t ldx, const float* bias,
               float* y, int64_t ldy, int64_t t0, int64_t t1) {
  for (int64_t b0 = 0; b0 < nvalid; b0 += kMaxNb) {
    const float* xb = x + b0 * ldx;
    float* yb = y + b0 * ldy;
    switch (std::min<int64_t>(kMaxNb, nvalid - b0)) {
      case 1: run<kN, kM, 1>(w, xb, ldx, bias, yb, ldy, t0, t1); break;
      case 2: run<kN, kM, 2>(w, xb, ldx, bias, yb, ldy, t0, t1); break;
      default: run<kN, kM, 3>(w, xb, ldx, bias, yb, ldy, t0, t1); break;
    }
  }
}

}  // namespace

void spmv_nm_f32_avx2(const NmWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                      const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1) {
  if (w.n == 2 && w.m == 4) {
    run_batch<2, 4>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
  } else if (w.n == 1 && w.m == 4) {
    run_batch<1, 4>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
  } else if (w.n == 4 && w.m == 8) {
    run_batch<4, 8>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
  } else {
    run_batch<0, 0>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
  }
}

}  // namespace sparseprune
