// SpMM, W in CSR, activations in transposed panels of MR batch rows; portable C++.
#include "../kernels.h"

namespace sparseprune {
namespace {

template <int MR, typename Idx>
void run(const CsrWeight& w, const float* panel, int64_t nvalid, const float* bias, float* y,
         int64_t ldy, int64_t r0, int64_t r1) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  const float* v = w.values.data();
  for (int64_t o = r0; o < r1; ++o) {
    float acc[MR] = {};
    for (int64_t j = w.row_ptr[o]; j < w.row_ptr[o + 1]; ++j) {
      const float wv = v[j];
      const float* p = panel + static_cast<int64_t>(ci[j]) * MR;
      for (int r = 0; r < MR; ++r) acc[r] += wv * p[r];
    }
    const float b = bias ? bias[o] : 0.f;
    for (int64_t r = 0; r < nvalid; ++r) y[r * ldy + o] = b + acc[r];
  }
}

}  // namespace

void spmm_csr_f32_8x1_scalar(const CsrWeight& w, const float* panel, int64_t nvalid, int64_t /*ldx*/,
                             const float* bias, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.index_bits == 16) {
    run<8, uint16_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  } else {
    run<8, int32_t>(w, panel, nvalid, bias, y, ldy, r0, r1);
  }
}

}  // namespace sparseprune
