// SpMV, W in CSR, portable C++ (no ISA flags): the reference path every CPU can run.
#include "../kernels.h"

namespace sparseprune {
namespace {

template <typename Idx>
void run(const CsrWeight& w, const float* x, const float* bias, float* y, int64_t r0,
         int64_t r1) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  const float* v = w.values.data();
  for (int64_t o = r0; o < r1; ++o) {
    int64_t j = w.row_ptr[o];
    const int64_t end = w.row_ptr[o + 1];
    // Four partial sums break the add dependency chain.
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (; j + 4 <= end; j += 4) {
      s0 += v[j] * x[ci[j]];
      s1 += v[j + 1] * x[ci[j + 1]];
      s2 += v[j + 2] * x[ci[j + 2]];
      s3 += v[j + 3] * x[ci[j + 3]];
    }
    for (; j < end; ++j) s0 += v[j] * x[ci[j]];
    y[o] = (bias ? bias[o] : 0.f) + ((s0 + s1) + (s2 + s3));
  }
}

}  // namespace

void spmv_csr_f32_scalar(const CsrWeight& w, const float* x, int64_t nvalid, int64_t ldx,
                       const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  for (int64_t b = 0; b < nvalid; ++b, x += ldx, y += ldy) {
    if (w.index_bits == 16) {
      run<uint16_t>(w, x, bias, y, r0, r1);
    } else {
      run<int32_t>(w, x, bias, y, r0, r1);
    }
  }
}

}  // namespace sparseprune
