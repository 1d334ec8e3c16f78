// SpMV, W in CSR, AVX2 + FMA (this file alone is compiled with -mavx2 -mfma).
// "Manual gather": x[col] is fetched by scalar loads folded into vinsertps, eight lanes per FMA.
// Why not vgatherdps: on Zen 3 (1 thread, W in L2) the 8-wide hardware gather costs ~1.5 cycles
// per nonzero, this path ~0.85; on CPUs with fast gathers the spmv_csr_f32_avx2 row may win.
#include <immintrin.h>

#include <cstring>

#include "../common/insert_avx.h"
#include "../kernels.h"

namespace sparseprune {
namespace {

// Bytes ahead of the value stream to prefetch (index stream: same number of nonzeros ahead).
// Pays off when W streams from DRAM (70 % of 4096^2 is ~30 MB); neutral when W sits in L2/L3.
constexpr int kPrefetchBytes = 2048;

template <int kImm>
inline __m128 insert(__m128 a, const float* p) {
  return insert_ps_mem<kImm>(a, p);
}

// Four uint16 indices per 64-bit load; splitting into 32-bit halves makes each shift
// zero-extend for free (fewer ops than masking a 64-bit word).
inline __m128 gather4(const float* x, const uint16_t* c) {
  uint64_t q;
  std::memcpy(&q, c, 8);
  const uint32_t lo = static_cast<uint32_t>(q), hi = static_cast<uint32_t>(q >> 32);
  __m128 a = _mm_load_ss(x + (lo & 0xffff));
  a = insert<0x10>(a, x + (lo >> 16));
  a = insert<0x20>(a, x + (hi & 0xffff));
  return insert<0x30>(a, x + (hi >> 16));
}
// int32 indices two per 64-bit load (halves the index loads; indices are >= 0, so
// zero-extension is exact).
inline __m128 gather4(const float* x, const int32_t* c) {
  uint64_t p, q;
  std::memcpy(&p, c, 8);
  std::memcpy(&q, c + 2, 8);
  __m128 a = _mm_load_ss(x + static_cast<uint32_t>(p));
  a = insert<0x10>(a, x + (p >> 32));
  a = insert<0x20>(a, x + static_cast<uint32_t>(q));
  return insert<0x30>(a, x + (q >> 32));
}
template <typename Idx>
inline __m256 gather8(const float* x, const Idx* c) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(x, c)), gather4(x, c + 4), 1);
}

// Loading 8 lanes at kLaneMask + 8 - n gives a mask with lanes [0, n) set, n in [0, 8].
alignas(32) constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <typename Idx>
void run(const CsrWeight& w, const float* x, const float* bias, float* y, int64_t r0,
         int64_t r1) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  const float* v = w.values.data();
  // A masked chunk reads 8 indices, so it is used only where that stays inside the arrays.
  const int64_t masked_ok = w.row_ptr[w.rows] - 8;
  for (int64_t o = r0; o < r1; ++o) {
    int64_t j = w.row_ptr[o];
    const int64_t end = w.row_ptr[o + 1];
    // Two accumulators are enough: the FMA chain is far from the bottleneck (loads/shuffles).
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= end; j += 16) {
      // Prefetch never faults, so running past the arrays' end is harmless.
      _mm_prefetch(reinterpret_cast<const char*>(v + j) + kPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ci + j) + kPrefetchBytes / 4 * sizeof(Idx),
                   _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), gather8(x, ci + j), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8), gather8(x, ci + j + 8), a1);
    }
    if (j + 8 <= end) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), gather8(x, ci + j), a0);
      j += 8;
    }
    if (j <= masked_ok) {
      // Last 0..7 nonzeros as one masked chunk: a scalar loop of random length mispredicts
      // (~5 % at 200 nonzeros per row). Lanes past the row read the next rows' indices (valid
      // columns); both x and the value are zeroed there, so inf/nan in x cannot leak in.
      const __m256i m =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - (end - j)));
      const __m256 xm = _mm256_and_ps(gather8(x, ci + j), _mm256_castsi256_ps(m));
      a1 = _mm256_fmadd_ps(_mm256_maskload_ps(v + j, m), xm, a1);
      j = end;
    }
    float s = hsum(_mm256_add_ps(a0, a1));
    for (; j < end; ++j) s += v[j] * x[ci[j]];
    y[o] = (bias ? bias[o] : 0.f) + s;
  }
}

}  // namespace

void spmv_csr_f32_mgather_avx2(const CsrWeight& w, const float* x, int64_t nvalid, int64_t ldx,
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
