// SpMM, W in CSR, activations in transposed panels of MR batch rows; AVX2 + FMA (this file
// alone is compiled with -mavx2 -mfma).
//
// Each nonzero w of row o is one broadcast and MR/8 FMAs against the panel row of its column,
// the XNNPACK-style scheme. U nonzeros are unrolled into separate accumulators so that 8 FMA
// chains are in flight (FMA latency 4-5 cycles x 2 pipes); they are summed once per row.
#include <immintrin.h>

#include "../common/store_tile.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

template <int MR, int U, typename Idx>
void run(const CsrWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t r0, int64_t r1) {
  constexpr int V = MR / 8;  // ymm vectors per panel row
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  const float* v = w.values.data();
  // Outputs of kTileRows rows at a time, written out batch row by batch row (store_tile.h).
  constexpr int kTileRows = 16;
  alignas(32) float tile[kTileRows][MR];
  for (int64_t o = r0; o < r1; ++o) {
    float* out = tile[(o - r0) % kTileRows];
    int64_t j = w.row_ptr[o];
    const int64_t end = w.row_ptr[o + 1];
    __m256 acc[U][V];
    for (int u = 0; u < U; ++u)
      for (int c = 0; c < V; ++c) acc[u][c] = _mm256_setzero_ps();
    for (; j + U <= end; j += U) {
      for (int u = 0; u < U; ++u) {
        const __m256 wv = _mm256_broadcast_ss(v + j + u);
        const float* p = panel + static_cast<int64_t>(ci[j + u]) * MR;
        for (int c = 0; c < V; ++c)
          acc[u][c] = _mm256_fmadd_ps(wv, _mm256_load_ps(p + 8 * c), acc[u][c]);
      }
    }
    for (; j < end; ++j) {
      const __m256 wv = _mm256_broadcast_ss(v + j);
      const float* p = panel + static_cast<int64_t>(ci[j]) * MR;
      for (int c = 0; c < V; ++c)
        acc[0][c] = _mm256_fmadd_ps(wv, _mm256_load_ps(p + 8 * c), acc[0][c]);
    }
    for (int c = 0; c < V; ++c) {
      __m256 s = acc[0][c];
      for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][c]);
      _mm256_store_ps(out + 8 * c, s);
    }
    const int64_t n = (o - r0) % kTileRows + 1;
    if (n == kTileRows || o + 1 == r1) {
      const int64_t o0 = o + 1 - n;
      store_tile_transposed(&tile[0][0], MR, n, nvalid, bias ? bias + o0 : nullptr, y + o0, ldy);
    }
  }
}

template <int MR, int U>
void dispatch_idx(const CsrWeight& w, const float* panel, int64_t nvalid, const float* bias,
                  float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.index_bits == 16) {
    run<MR, U, uint16_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  } else {
    run<MR, U, int32_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  }
}

}  // namespace

void spmm_csr_f32_8x1_avx2(const CsrWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                           const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  dispatch_idx<8, 8>(w, panel, nvalid, bias, y, ldy, r0, r1);
}

void spmm_csr_f32_16x1_avx2(const CsrWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                            const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  dispatch_idx<16, 4>(w, panel, nvalid, bias, y, ldy, r0, r1);
}

}  // namespace sparseprune
