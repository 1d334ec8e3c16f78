// SpMM, W in BSR, activations in transposed panels of MR batch rows; AVX2 + FMA (this file
// alone is compiled with -mavx2 -mfma).
//
// A block row is taken NA output rows at a time (a row group): for each block and each of its c
// columns b, the panel row (block_col * c + b) is loaded once (MR / 8 ymm) and FMA'd with NA
// broadcast weights into NA x MR / 8 accumulators, so one panel load serves NA rows (register
// blocking: 4x4 at MR = 16 is 8 loads + 16 broadcasts per 32 FMAs, FMA-bound). NA is capped so
// the accumulators fit in the 16 ymm registers; a larger r (8x1, 16x1) re-walks the block row
// once per group. When NA x MR / 8 < 8 FMA chains cannot cover the FMA latency (4 cycles x 2
// pipes), S accumulator sets take alternate block columns (or blocks, for c = 1) and are summed
// at the end. R = 0 / C = 0 instantiate the runtime-shape fallback (any r, c in 1..16).
#include <immintrin.h>

#include <algorithm>

#include "../common/store_tile.h"
#include "../formats/bsr_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

// One block column b of block j (panel row block_col * c + b) into one accumulator set.
// A function, not a lambda over the set array: with the lambda GCC kept the sets in memory and
// chained one accumulator through a store and a reload each step (2.5x slower at 4x1, MR = 8).
template <int V, int NA>
__attribute__((always_inline)) inline void column(__m256 (&acc)[NA][V], const float* p,
                                                  const float* v, int64_t c) {
  __m256 pr[V];
  for (int q = 0; q < V; ++q) pr[q] = _mm256_load_ps(p + 8 * q);
  for (int a = 0; a < NA; ++a) {
    const __m256 wv = _mm256_broadcast_ss(v + a * c);
    for (int q = 0; q < V; ++q) acc[a][q] = _mm256_fmadd_ps(wv, pr[q], acc[a][q]);
  }
}

// Sums of rows [a0, a0 + NA) of block row i over MR batch lanes into out[NA][MR].
template <int V, int R, int C, int NA, int S>
inline void group(const BsrWeight& w, const float* panel, int64_t i, int64_t a0, float* out) {
  constexpr int MR = 8 * V;
  static_assert(C != 0 || S == 1, "runtime c: the set of a column is not a constant");
  static_assert(S <= C || C == 0 || S % C == 0, "sets must cover whole blocks");
  constexpr int JU = (C != 0 && S > C) ? S / C : 1;  // blocks per unrolled step
  const int64_t c = C ? C : w.c, rc = (R ? R : w.r) * c;
  const int32_t* bc = w.block_col.data();
  const float* vals = w.values.data() + a0 * c;  // row a0 of block 0
  __m256 acc[S][NA][V];
  for (int s = 0; s < S; ++s)
    for (int a = 0; a < NA; ++a)
      for (int q = 0; q < V; ++q) acc[s][a][q] = _mm256_setzero_ps();
  auto pan = [&](int64_t j, int64_t b) {
    return panel + (static_cast<int64_t>(bc[j]) * c + b) * MR;
  };
  int64_t j = w.block_row_ptr[i];
  const int64_t jf = w.full_end(i);
  if constexpr (C != 0) {
    // Compile-time c: every set index below is a constant once the loops unroll.
    for (; j + JU <= jf; j += JU) {
#pragma GCC unroll 16
      for (int u = 0; u < JU; ++u)
#pragma GCC unroll 16
        for (int b = 0; b < C; ++b)
          column<V, NA>(acc[(u * C + b) % S], pan(j + u, b), vals + (j + u) * rc + b, C);
    }
    for (; j < jf; ++j)
#pragma GCC unroll 16
      for (int b = 0; b < C; ++b)
        column<V, NA>(acc[JU == 1 ? b % S : 0], pan(j, b), vals + j * rc + b, C);
  } else {
    for (; j < jf; ++j)
      for (int64_t b = 0; b < c; ++b) column<V, NA>(acc[0], pan(j, b), vals + j * rc + b, c);
  }
  // The edge block has only edge_c columns in the panel: its other panel rows do not exist.
  if (jf < w.block_row_ptr[i + 1])
    for (int64_t b = 0; b < w.edge_c; ++b)
      column<V, NA>(acc[0], pan(jf, b), vals + jf * rc + b, c);
  for (int a = 0; a < NA; ++a)
    for (int q = 0; q < V; ++q) {
      __m256 t = acc[0][a][q];
      for (int s = 1; s < S; ++s) t = _mm256_add_ps(t, acc[s][a][q]);
      _mm256_store_ps(out + a * MR + 8 * q, t);
    }
}

// y[q * ldy + o] = bias[o] + out[a][q] for the group's rows o < rows and q < nvalid.
template <int MR>
inline void scatter(const BsrWeight& w, const float* out, int64_t o0, int64_t na, int64_t nvalid,
                    const float* bias, float* y, int64_t ldy) {
  na = std::min(na, w.rows - o0);
  store_tile_transposed(out, MR, na, nvalid, bias ? bias + o0 : nullptr, y + o0, ldy);
}

// Fast shapes: R % NA == 0, every group full (rows past w.rows computed, not stored).
template <int V, int R, int C, int NA, int S>
void run_fixed(const BsrWeight& w, const float* panel, int64_t nvalid, const float* bias,
               float* y, int64_t ldy, int64_t u0, int64_t u1) {
  static_assert(R % NA == 0, "row groups tile the block");
  alignas(32) float out[NA * 8 * V];
  for (int64_t i = u0; i < u1; ++i)
    for (int64_t a0 = 0; a0 < R && i * R + a0 < w.rows; a0 += NA) {
      group<V, R, C, NA, S>(w, panel, i, a0, out);
      scatter<8 * V>(w, out, i * R + a0, NA, nvalid, bias, y, ldy);
    }
}

// Any r, c: groups of up to GA rows, the last group's size dispatched to its own instantiation.
template <int V, int GA>
void run_generic(const BsrWeight& w, const float* panel, int64_t nvalid, const float* bias,
                 float* y, int64_t ldy, int64_t u0, int64_t u1) {
  alignas(32) float out[GA * 8 * V];
  for (int64_t i = u0; i < u1; ++i) {
    const int64_t n = std::min(w.r, w.rows - i * w.r);  // rows of this block row to compute
    for (int64_t a0 = 0; a0 < n; a0 += GA) {
      const int64_t na = std::min<int64_t>(GA, n - a0);
      switch (na) {
        case 1: group<V, 0, 0, 1, 1>(w, panel, i, a0, out); break;
        case 2: group<V, 0, 0, 2, 1>(w, panel, i, a0, out); break;
        case 3: group<V, 0, 0, 3, 1>(w, panel, i, a0, out); break;
        case 4: group<V, 0, 0, 4, 1>(w, panel, i, a0, out); break;
        case 5: group<V, 0, 0, (GA >= 5 ? 5 : 1), 1>(w, panel, i, a0, out); break;
        case 6: group<V, 0, 0, (GA >= 6 ? 6 : 1), 1>(w, panel, i, a0, out); break;
        case 7: group<V, 0, 0, (GA >= 7 ? 7 : 1), 1>(w, panel, i, a0, out); break;
        default: group<V, 0, 0, (GA >= 8 ? 8 : 1), 1>(w, panel, i, a0, out); break;
      }
      scatter<8 * V>(w, out, i * w.r + a0, na, nvalid, bias, y, ldy);
    }
  }
}

// V ymm per panel row. NA (rows per group) keeps S * NA * V accumulators + V panel registers +
// 1 broadcast within 16 ymm; S brings the FMA chains to 8.
template <int V>
void run(const BsrWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t u0, int64_t u1) {
  constexpr int GA = 8 / V;
  switch (w.r * 100 + w.c) {
    case 401: return run_fixed<V, 4, 1, 4, 2 / V>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 801: return run_fixed<V, 8, 1, GA, 1>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 1601: return run_fixed<V, 16, 1, GA, 1>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 104: return run_fixed<V, 1, 4, 1, 8 / V>(w, panel, nvalid, bias, y, ldy, u0, u1);
    case 404: return run_fixed<V, 4, 4, 4, 2 / V>(w, panel, nvalid, bias, y, ldy, u0, u1);
    default: return run_generic<V, GA>(w, panel, nvalid, bias, y, ldy, u0, u1);
  }
}

}  // namespace

void spmm_bsr_f32_16_avx2(const BsrWeight& w, const float* panel, int64_t nvalid,
                          int64_t /*ldx*/, const float* bias, float* y, int64_t ldy, int64_t u0,
                          int64_t u1) {
  run<2>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

void spmm_bsr_f32_8_avx2(const BsrWeight& w, const float* panel, int64_t nvalid,
                         int64_t /*ldx*/, const float* bias, float* y, int64_t ldy, int64_t u0,
                         int64_t u1) {
  run<1>(w, panel, nvalid, bias, y, ldy, u0, u1);
}

}  // namespace sparseprune
