// Max pooling, AVX2 (this file alone is compiled with -mavx2 -mfma): the vertical max runs 8
// columns per instruction; the horizontal pass too for stride 1 (shifted loads) and stride 2
// (two loads deinterleaved into the even columns: vshufps + vpermpd), scalar otherwise.
#include <immintrin.h>

#include "maxpool2d_rows.h"

namespace sparseprune {
namespace {

// nanmax per lane: vmaxps returns its second operand when either is NaN, so m stays NaN by
// itself; a NaN in v is blended in.
inline __m256 vnanmax(__m256 m, __m256 v) {
  return _mm256_blendv_ps(_mm256_max_ps(v, m), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

// Lanes r[0], r[2], ..., r[14].
inline __m256 evens(const float* r) {
  const __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8);
  const __m256 s = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), _MM_SHUFFLE(3, 1, 2, 0)));
}

void hmax(const PoolGeometry& g, const float* row, float* y) {
  int64_t ow = 0;
  if (g.stride_w == 1) {
    for (; ow + 8 <= g.out_w; ow += 8) {
      __m256 m = _mm256_loadu_ps(row + ow);
      for (int64_t j = 1; j < g.kw; ++j) m = vnanmax(m, _mm256_loadu_ps(row + ow + j * g.dil_w));
      _mm256_storeu_ps(y + ow, m);
    }
  } else if (g.stride_w == 2) {
    // The last full vector reads row[2 (ow + 7) + j dw + 1] <= the last window's end.
    for (; ow + 8 <= g.out_w && 2 * ow + 16 + (g.kw - 1) * g.dil_w <= g.scratch(); ow += 8) {
      __m256 m = evens(row + 2 * ow);
      for (int64_t j = 1; j < g.kw; ++j) m = vnanmax(m, evens(row + 2 * ow + j * g.dil_w));
      _mm256_storeu_ps(y + ow, m);
    }
  }
  hmax_scalar(g, row, y, ow);
}

}  // namespace

void maxpool2d_f32_avx2(const PoolGeometry& g, const float* x, float* y, float* row, int64_t p0,
                        int64_t p1) {
  maxpool_planes(
      g, x, y, row, p0, p1,
      [](float* dst, const float* src, int64_t n) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(dst + i,
                           vnanmax(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i)));
        for (; i < n; ++i) dst[i] = nanmax(dst[i], src[i]);
      },
      hmax);
}

}  // namespace sparseprune
