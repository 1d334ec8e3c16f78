// SpMV, W in BSR, AVX2 + FMA (this file alone is compiled with -mavx2 -mfma).
// Up to 4 batch rows share each pass over W, so a weight is loaded once for all of them.
//
// r x 1 blocks (4x1, 8x1, 16x1): the block's r weights are contiguous, so one x[k] broadcast and
// one vector load give r outputs' multiply-adds: per block 1 index + 1 broadcast + r / 8 loads
// and r / 8 FMAs. U blocks go to separate accumulators (the FMA latency would cap a single
// chain at 4 cycles per block; W streams from L3 at about one block per cycle).
// r x 4 blocks (4x4, 1x4): a row of the block times the 4-float x chunk, one x chunk load
// (vbroadcastf128) serving the two rows held in one ymm; sums are reduced across lanes once per
// block row. The edge block (cols % 4 != 0) is added in scalar so x is never read past cols.
// Other shapes: a runtime-r, c scalar loop.
#include <immintrin.h>

#include <algorithm>

#include "../formats/bsr_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

constexpr int kMaxNb = 4;  // batch rows per pass over W

struct Vx {  // 4 lanes
  using T = __m128;
  static constexpr int L = 4;
  static T zero() { return _mm_setzero_ps(); }
  static T load(const float* p) { return _mm_loadu_ps(p); }
  static T bcast(const float* p) { return _mm_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm_add_ps(a, b); }
  static void store(float* p, T v) { _mm_storeu_ps(p, v); }
};
struct Vy {  // 8 lanes
  using T = __m256;
  static constexpr int L = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Writes bias + acc for the rows < w.rows of block row i; acc holds w.r sums.
inline void store(const BsrWeight& w, int64_t i, const float* acc, const float* bias, float* y) {
  const int64_t o0 = i * w.r;
  const int64_t n = std::min(w.r, w.rows - o0);
  for (int64_t a = 0; a < n; ++a) y[o0 + a] = (bias ? bias[o0 + a] : 0.f) + acc[a];
}

// Adds the edge block of block row i (if any) to acc[NB][16]: only edge_c columns exist in x.
template <int NB>
inline void add_edge(const BsrWeight& w, int64_t i, const float* const* xs, float (*acc)[16]) {
  const int64_t jf = w.full_end(i);
  if (jf == w.block_row_ptr[i + 1]) return;
  const int64_t r = w.r, c = w.c, k0 = static_cast<int64_t>(w.block_col[jf]) * c;
  const float* v = w.values.data() + jf * r * c;
  for (int nb = 0; nb < NB; ++nb)
    for (int64_t a = 0; a < r; ++a)
      for (int64_t b = 0; b < w.edge_c; ++b) acc[nb][a] += v[a * c + b] * xs[nb][k0 + b];
}

template <class Vt, int R, int NB>
void run_rx1(const BsrWeight& w, const float* const* xs, const float* bias, float* const* ys,
             int64_t u0, int64_t u1) {
  using T = typename Vt::T;
  constexpr int VR = R / Vt::L;                           // vectors per block
  constexpr int U = std::max(1, 8 / (NB * VR));           // blocks in flight
  const float* vals = w.values.data();
  const int32_t* bc = w.block_col.data();
  for (int64_t i = u0; i < u1; ++i) {
    T acc[U][NB][VR];
    for (int u = 0; u < U; ++u)
      for (int nb = 0; nb < NB; ++nb)
        for (int q = 0; q < VR; ++q) acc[u][nb][q] = Vt::zero();
    auto block = [&](int64_t j, int u) {
      T v[VR];
      for (int q = 0; q < VR; ++q) v[q] = Vt::load(vals + j * R + q * Vt::L);
      for (int nb = 0; nb < NB; ++nb) {
        const T xb = Vt::bcast(xs[nb] + bc[j]);
        for (int q = 0; q < VR; ++q) acc[u][nb][q] = Vt::fma(v[q], xb, acc[u][nb][q]);
      }
    };
    int64_t j = w.block_row_ptr[i];
    const int64_t j1 = w.block_row_ptr[i + 1];  // c = 1: no edge block
    for (; j + U <= j1; j += U)
      for (int u = 0; u < U; ++u) block(j + u, u);
    for (; j < j1; ++j) block(j, 0);
    alignas(32) float out[NB][16];
    for (int nb = 0; nb < NB; ++nb) {
      for (int q = 0; q < VR; ++q) {
        T t = acc[0][nb][q];
        for (int u = 1; u < U; ++u) t = Vt::add(t, acc[u][nb][q]);
        Vt::store(out[nb] + q * Vt::L, t);
      }
      store(w, i, out[nb], bias, ys[nb]);
    }
  }
}

// 4x4 blocks: ymm 0 holds block rows 0-1, ymm 1 rows 2-3, each against x[k0 .. k0 + 4) in both
// 128-bit lanes.
template <int NB>
void run_4x4(const BsrWeight& w, const float* const* xs, const float* bias, float* const* ys,
             int64_t u0, int64_t u1) {
  constexpr int U = std::max(1, 4 / NB);
  const float* vals = w.values.data();
  const int32_t* bc = w.block_col.data();
  for (int64_t i = u0; i < u1; ++i) {
    __m256 acc[U][NB][2];
    for (int u = 0; u < U; ++u)
      for (int nb = 0; nb < NB; ++nb) acc[u][nb][0] = acc[u][nb][1] = _mm256_setzero_ps();
    auto block = [&](int64_t j, int u) {
      const __m256 v0 = _mm256_loadu_ps(vals + j * 16), v1 = _mm256_loadu_ps(vals + j * 16 + 8);
      for (int nb = 0; nb < NB; ++nb) {
        const __m256 x4 = _mm256_broadcast_ps(
            reinterpret_cast<const __m128*>(xs[nb] + static_cast<int64_t>(bc[j]) * 4));
        acc[u][nb][0] = _mm256_fmadd_ps(v0, x4, acc[u][nb][0]);
        acc[u][nb][1] = _mm256_fmadd_ps(v1, x4, acc[u][nb][1]);
      }
    };
    int64_t j = w.block_row_ptr[i];
    const int64_t jf = w.full_end(i);
    for (; j + U <= jf; j += U)
      for (int u = 0; u < U; ++u) block(j + u, u);
    for (; j < jf; ++j) block(j, 0);
    alignas(32) float out[NB][16];
    for (int nb = 0; nb < NB; ++nb) {
      __m256 a01 = acc[0][nb][0], a23 = acc[0][nb][1];
      for (int u = 1; u < U; ++u) {
        a01 = _mm256_add_ps(a01, acc[u][nb][0]);
        a23 = _mm256_add_ps(a23, acc[u][nb][1]);
      }
      // hadd twice: lane 0 holds [r0, r2, ..], lane 1 [r1, r3, ..]; interleave to [r0..r3].
      const __m256 t = _mm256_hadd_ps(a01, a23);
      const __m256 t2 = _mm256_hadd_ps(t, t);
      _mm_storeu_ps(out[nb], _mm_unpacklo_ps(_mm256_castps256_ps128(t2),
                                             _mm256_extractf128_ps(t2, 1)));
    }
    add_edge<NB>(w, i, xs, out);
    for (int nb = 0; nb < NB; ++nb) store(w, i, out[nb], bias, ys[nb]);
  }
}

// 1x4 blocks: two consecutive blocks (8 contiguous weights) per ymm against their two x chunks.
template <int NB>
void run_1x4(const BsrWeight& w, const float* const* xs, const float* bias, float* const* ys,
             int64_t u0, int64_t u1) {
  constexpr int U = std::max(1, 4 / NB);
  const float* vals = w.values.data();
  const int32_t* bc = w.block_col.data();
  for (int64_t i = u0; i < u1; ++i) {
    __m256 acc[U][NB];
    for (int u = 0; u < U; ++u)
      for (int nb = 0; nb < NB; ++nb) acc[u][nb] = _mm256_setzero_ps();
    int64_t j = w.block_row_ptr[i];
    const int64_t jf = w.full_end(i);
    for (; j + 2 * U <= jf; j += 2 * U)
      for (int u = 0; u < U; ++u) {
        const int64_t jj = j + 2 * u;
        const __m256 v = _mm256_loadu_ps(vals + jj * 4);
        for (int nb = 0; nb < NB; ++nb) {
          const __m256 x8 = _mm256_loadu2_m128(xs[nb] + static_cast<int64_t>(bc[jj + 1]) * 4,
                                               xs[nb] + static_cast<int64_t>(bc[jj]) * 4);
          acc[u][nb] = _mm256_fmadd_ps(v, x8, acc[u][nb]);
        }
      }
    alignas(32) float out[NB][16];
    for (int nb = 0; nb < NB; ++nb) {
      __m256 t = acc[0][nb];
      for (int u = 1; u < U; ++u) t = _mm256_add_ps(t, acc[u][nb]);
      __m128 s = _mm_setzero_ps();  // the last < 2U full blocks, one 4-float chunk each
      for (int64_t jj = j; jj < jf; ++jj)
        s = _mm_fmadd_ps(_mm_loadu_ps(vals + jj * 4),
                         _mm_loadu_ps(xs[nb] + static_cast<int64_t>(bc[jj]) * 4), s);
      out[nb][0] = hsum(_mm256_add_ps(t, _mm256_castps128_ps256(s)));
    }
    add_edge<NB>(w, i, xs, out);
    for (int nb = 0; nb < NB; ++nb) store(w, i, out[nb], bias, ys[nb]);
  }
}

void run_generic(const BsrWeight& w, const float* x, const float* bias, float* y, int64_t u0,
                 int64_t u1) {
  const int64_t r = w.r, c = w.c;
  for (int64_t i = u0; i < u1; ++i) {
    float acc[BsrWeight::kMaxBlock] = {};
    for (int64_t j = w.block_row_ptr[i]; j < w.block_row_ptr[i + 1]; ++j) {
      const float* v = w.values.data() + j * r * c;
      const int64_t k0 = static_cast<int64_t>(w.block_col[j]) * c;
      const int64_t nb = w.block_col[j] == w.block_cols - 1 ? w.edge_c : c;
      for (int64_t a = 0; a < r; ++a)
        for (int64_t b = 0; b < nb; ++b) acc[a] += v[a * c + b] * x[k0 + b];
    }
    store(w, i, acc, bias, y);
  }
}

template <int NB>
void run_nb(const BsrWeight& w, const float* const* xs, const float* bias, float* const* ys,
            int64_t u0, int64_t u1) {
  switch (w.r * 100 + w.c) {
    case 401: return run_rx1<Vx, 4, NB>(w, xs, bias, ys, u0, u1);
    case 801: return run_rx1<Vy, 8, NB>(w, xs, bias, ys, u0, u1);
    case 1601: return run_rx1<Vy, 16, NB>(w, xs, bias, ys, u0, u1);
    case 104: return run_1x4<NB>(w, xs, bias, ys, u0, u1);
    case 404: return run_4x4<NB>(w, xs, bias, ys, u0, u1);
    default:
      for (int nb = 0; nb < NB; ++nb) run_generic(w, xs[nb], bias, ys[nb], u0, u1);
  }
}

}  // namespace

void spmv_bsr_f32_avx2(const BsrWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                       const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1) {
  for (int64_t b0 = 0; b0 < nvalid; b0 += kMaxNb) {
    const int nb = static_cast<int>(std::min<int64_t>(kMaxNb, nvalid - b0));
    const float* xs[kMaxNb];
    float* ys[kMaxNb];
    for (int q = 0; q < nb; ++q) {
      xs[q] = x + (b0 + q) * ldx;
      ys[q] = y + (b0 + q) * ldy;
    }
    switch (nb) {
      case 1: run_nb<1>(w, xs, bias, ys, u0, u1); break;
      case 2: run_nb<2>(w, xs, bias, ys, u0, u1); break;
      case 3: run_nb<3>(w, xs, bias, ys, u0, u1); break;
      default: run_nb<4>(w, xs, bias, ys, u0, u1); break;
    }
  }
}

}  // namespace sparseprune
