// SpMV (batch rows read directly) over the N:M tile layout, AVX-512 F/BW/DQ/VL (this file alone
// is compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma).
//
// One zmm lane = one output row of a 16-row tile. Per window (16 / m whole groups, <= 16 x
// floats) the x slice is loaded once; per pair of entries one vpmovzxbd of 16 nibble bytes gives
// the lanes' permute indices (vpermps reads only the low 4 bits, a shift exposes the high
// nibble). So 16 kept values cost one 64-B value load, half an index load, one permute and one
// FMA, and the weight streams at 4.5 B per kept value: batch 1 is bound by that stream.
// GCC 12's -W(maybe-)uninitialized fires inside the AVX-512 headers (_mm512_undefined_*, GCC
// PR105593); silenced here, before they are included, so -Wall stays useful for this file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "../formats/nm_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

constexpr int kMaxNb = 4;  // batch rows per pass over W: 4 x 4 accumulators + 4 x slices fit
// A core streams DRAM at ~13 GB/s along one sequential stream but ~19-20 GB/s along 4-8
// (measured, Zen 4): each tile is walked as kSeg segments of windows in lockstep.
constexpr int kSeg = 4;

// kN, kM: the shape when known at compile time (the hot 2:4, 1:4, 4:8), else 0 = read from w.
// NB batch rows share each weight load.
template <int kN, int kM, int NB>
void run(const NmWeight& w, const float* x, int64_t ldx, const float* bias, float* y,
         int64_t ldy, int64_t t0, int64_t t1) {
  const int n = kN ? kN : static_cast<int>(w.n);
  const int m = kM ? kM : static_cast<int>(w.m);
  const int wc = (16 / m) * m, E = (16 / m) * n, P = (E + 1) / 2;
  const int64_t windows = w.windows;
  // Windows whose 16-float load stays inside x. The others (at most 2, as win_cols >= 9) read
  // a zero-padded copy of the columns from the first of them on, made once per call.
  const int64_t nfull = w.cols >= 16 ? std::min<int64_t>(windows, (w.cols - 16) / wc + 1) : 0;
  alignas(64) float xt[NB][32];  // (2 - 1) * 16 + 16 floats cover both
  if (nfull < windows) {
    const int64_t c0 = nfull * wc;
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 32; ++i) xt[b][i] = c0 + i < w.cols ? x[b * ldx + c0 + i] : 0.f;
  }
  const int64_t tile_vals = windows * E * kNmTile, tile_nib = windows * P * kNmTile;

  for (int64_t t = t0; t < t1; ++t) {
    const float* vt = w.vals.data() + t * tile_vals;
    const uint8_t* qt = w.nib.data() + t * tile_nib;
    // One accumulator per (segment, batch row): 4 to 16 FMA chains for the 4-cycle latency.
    __m512 a[kSeg][NB];
    for (int s = 0; s < kSeg; ++s)
      for (int b = 0; b < NB; ++b) a[s][b] = _mm512_setzero_ps();
    auto window = [&](int64_t wi, __m512 (&acc)[NB]) {
      const float* v = vt + wi * E * kNmTile;
      const uint8_t* q = qt + wi * P * kNmTile;
      __m512 xv[NB];
      for (int b = 0; b < NB; ++b)
        xv[b] = _mm512_loadu_ps(wi < nfull ? x + b * ldx + wi * wc : xt[b] + (wi - nfull) * wc);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p, q += kNmTile, v += 2 * kNmTile) {
        const __m512i i0 =
            _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q)));
        const __m512 v0 = _mm512_load_ps(v);
        for (int b = 0; b < NB; ++b)
          acc[b] = _mm512_fmadd_ps(v0, _mm512_permutexvar_ps(i0, xv[b]), acc[b]);
        if (2 * p + 1 < E) {
          const __m512i i1 = _mm512_srli_epi32(i0, 4);
          const __m512 v1 = _mm512_load_ps(v + kNmTile);
          for (int b = 0; b < NB; ++b)
            acc[b] = _mm512_fmadd_ps(v1, _mm512_permutexvar_ps(i1, xv[b]), acc[b]);
        }
      }
    };
    // The tile's windows as kSeg interleaved segments: kSeg concurrent streams per array.
    const int64_t seg = windows / kSeg;
    for (int64_t i = 0; i < seg; ++i)
      for (int s = 0; s < kSeg; ++s) window(s * seg + i, a[s]);
    for (int64_t wi = kSeg * seg; wi < windows; ++wi) window(wi, a[0]);

    const int64_t o0 = t * kNmTile;
    const int64_t nr = std::min<int64_t>(kNmTile, w.rows - o0);
    const __mmask16 mk = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
    const __m512 bv = bias ? _mm512_maskz_loadu_ps(mk, bias + o0) : _mm512_setzero_ps();
    for (int b = 0; b < NB; ++b) {
      __m512 s = a[0][b];
      for (int g = 1; g < kSeg; ++g) s = _mm512_add_ps(s, a[g][b]);
      _mm512_mask_storeu_ps(y + b * ldy + o0, mk, _mm512_add_ps(s, bv));
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
      case 3: run<kN, kM, 3>(w, xb, ldx, bias, yb, ldy, t0, t1); break;
      default: run<kN, kM, 4>(w, xb, ldx, bias, yb, ldy, t0, t1); break;
    }
  }
}

}  // namespace

void spmv_nm_f32_avx512(const NmWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                        const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1) {
  // The hot shapes get fully unrolled windows; every other n:m runs the same code with loops.
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
