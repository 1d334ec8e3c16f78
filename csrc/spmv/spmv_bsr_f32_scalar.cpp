// SpMV, W in BSR, portable C++ (no ISA flags): the reference path every CPU can run.
// Fast shapes get compile-time r, c (the block loops unroll, the r sums stay in registers or
// SSE vectors) and take up to 4 batch rows per pass over W, so each weight is loaded once for
// all of them. Other shapes run a runtime-r, c loop one batch row at a time.
#include <algorithm>

#include "../formats/bsr_weight.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

constexpr int kMaxNb = 4;  // batch rows per pass over W

// Writes the r sums of block row i for one batch row: bias + acc, rows < w.rows only.
inline void store(const BsrWeight& w, int64_t i, const float* acc, const float* bias, float* y) {
  const int64_t o0 = i * w.r;
  const int64_t n = std::min(w.r, w.rows - o0);
  for (int64_t a = 0; a < n; ++a) y[o0 + a] = (bias ? bias[o0 + a] : 0.f) + acc[a];
}

template <int R, int C, int NB>
void run_fixed(const BsrWeight& w, const float* const* xs, const float* bias, float* const* ys,
               int64_t u0, int64_t u1) {
  const float* vals = w.values.data();
  const int32_t* bc = w.block_col.data();
  for (int64_t i = u0; i < u1; ++i) {
    float acc[NB][R] = {};
    const int64_t jf = w.full_end(i);
    for (int64_t j = w.block_row_ptr[i]; j < jf; ++j) {
      const float* v = vals + j * (R * C);
      const int64_t k0 = static_cast<int64_t>(bc[j]) * C;
      for (int nb = 0; nb < NB; ++nb) {
        const float* x = xs[nb] + k0;
        for (int a = 0; a < R; ++a) {
          float s = 0.f;
          for (int b = 0; b < C; ++b) s += v[a * C + b] * x[b];
          acc[nb][a] += s;
        }
      }
    }
    if (jf < w.block_row_ptr[i + 1]) {  // edge block: only edge_c columns exist in x
      const float* v = vals + jf * (R * C);
      const int64_t k0 = static_cast<int64_t>(bc[jf]) * C;
      for (int nb = 0; nb < NB; ++nb)
        for (int a = 0; a < R; ++a)
          for (int64_t b = 0; b < w.edge_c; ++b) acc[nb][a] += v[a * C + b] * xs[nb][k0 + b];
    }
    for (int nb = 0; nb < NB; ++nb) store(w, i, acc[nb], bias, ys[nb]);
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

template <int R, int C>
void run_shape(const BsrWeight& w, const float* x, int64_t nvalid, int64_t ldx,
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
      case 1: run_fixed<R, C, 1>(w, xs, bias, ys, u0, u1); break;
      case 2: run_fixed<R, C, 2>(w, xs, bias, ys, u0, u1); break;
      case 3: run_fixed<R, C, 3>(w, xs, bias, ys, u0, u1); break;
      default: run_fixed<R, C, 4>(w, xs, bias, ys, u0, u1); break;
    }
  }
}

}  // namespace

void spmv_bsr_f32_scalar(const BsrWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                         const float* bias, float* y, int64_t ldy, int64_t u0, int64_t u1) {
  const int64_t shape = w.r * 100 + w.c;
  switch (shape) {
    case 401: return run_shape<4, 1>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
    case 801: return run_shape<8, 1>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
    case 1601: return run_shape<16, 1>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
    case 104: return run_shape<1, 4>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
    case 404: return run_shape<4, 4>(w, x, nvalid, ldx, bias, y, ldy, u0, u1);
    default:
      for (int64_t b = 0; b < nvalid; ++b) run_generic(w, x + b * ldx, bias, y + b * ldy, u0, u1);
  }
}

}  // namespace sparseprune
