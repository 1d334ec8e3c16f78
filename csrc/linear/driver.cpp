#include "driver.h"

#include <cstdlib>
#include <memory>
#include <new>
#if SPARSEPRUNE_X86
#include <xmmintrin.h>
#endif

namespace sparseprune {
namespace detail {
namespace {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Panel buffers up to this size stay allocated between calls; a larger one (a huge batch) is
// freed after its call instead of pinning that memory for the life of the thread.
constexpr size_t kKeepScratchFloats = size_t{4} << 20;  // 16 MiB

}  // namespace

float* panel_scratch(size_t floats) {
  thread_local std::unique_ptr<float, AlignedFree> buf;
  thread_local size_t cap = 0;
  if (floats == 0) {
    buf.reset();
    cap = 0;
    return nullptr;
  }
  if (floats > cap) {
    // 64-byte aligned: a misaligned panel cost up to 1.7x in the prototype.
    const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    buf.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    cap = buf ? bytes / sizeof(float) : 0;
    // Thrown before any thread starts; pybind11 turns it into MemoryError.
    if (!buf) throw std::bad_alloc();
  }
  return buf.get();
}

void release_large_scratch(size_t floats) {
  if (floats > kKeepScratchFloats) panel_scratch(0);
}

void pack_panel(const float* x, int64_t ldx, int64_t nvalid, int64_t K, int mr, float* panel) {
  // Walk k in blocks so each of the nvalid source rows streams sequentially. On x86, groups of
  // 4 rows x 4 columns go through an SSE transpose (baseline x86-64): the scalar copy ran at
  // ~1 element per 2 cycles, ~60 us per 32-row panel of 4096 columns, next to a 95 %-sparse
  // kernel's few hundred.
  constexpr int64_t kKb = 64;
  for (int64_t k0 = 0; k0 < K; k0 += kKb) {
    const int64_t k1 = std::min(K, k0 + kKb);
    int64_t r = 0;
#if SPARSEPRUNE_X86
    for (; r + 4 <= nvalid; r += 4) {
      const float* s0 = x + r * ldx;
      const float* s1 = s0 + ldx;
      const float* s2 = s1 + ldx;
      const float* s3 = s2 + ldx;
      int64_t k = k0;
      for (; k + 4 <= k1; k += 4) {
        __m128 a = _mm_loadu_ps(s0 + k), b = _mm_loadu_ps(s1 + k);
        __m128 c = _mm_loadu_ps(s2 + k), d = _mm_loadu_ps(s3 + k);
        _MM_TRANSPOSE4_PS(a, b, c, d);  // a..d: columns k..k+3, rows r..r+3
        _mm_storeu_ps(panel + (k + 0) * mr + r, a);
        _mm_storeu_ps(panel + (k + 1) * mr + r, b);
        _mm_storeu_ps(panel + (k + 2) * mr + r, c);
        _mm_storeu_ps(panel + (k + 3) * mr + r, d);
      }
      for (; k < k1; ++k)
        for (int64_t q = 0; q < 4; ++q) panel[k * mr + r + q] = x[(r + q) * ldx + k];
    }
#endif
    for (; r < nvalid; ++r) {
      const float* src = x + r * ldx;
      for (int64_t k = k0; k < k1; ++k) panel[k * mr + r] = src[k];
    }
    for (r = nvalid; r < mr; ++r)
      for (int64_t k = k0; k < k1; ++k) panel[k * mr + r] = 0.f;
  }
}

std::vector<Item> plan_items(int64_t batch, const std::vector<int>& mrs, bool has_spmv) {
  // mrs: panel widths, widest first. Full panels of the widest width that fits. A leftover that
  // fills a wider panel at least 1 / kMaxPanelPad of the way is padded into it: every pass
  // streams the whole weight and packs, zeroes and writes a tile per row block, so one padded
  // pass beat two or three narrower ones (Zen 4, 70 % SELL, MiniLM's 384/1536-wide layers:
  // 28 rows as one 32-row panel 1.3-1.4x faster than 16 + 8 + 4-padded-to-8, 20 and 22 rows
  // -3 % to +19 %; 12 rows over 32 lost). Otherwise a leftover of at least kMinPanelRows (or any
  // leftover without spmv) takes the narrowest panel that holds it, zero-padded (a padded panel
  // beat spmv rows from 4 rows on: 1.1-1.5x at 70-90 %).
  constexpr double kMaxPanelPad = 1.6;
  std::vector<Item> items;
  int64_t b = 0;
  while (!mrs.empty() && b < batch) {
    const int64_t rem = batch - b;
    int pick = -1;
    for (int i = 0; i < static_cast<int>(mrs.size()); ++i)
      if (mrs[i] <= rem) { pick = i; break; }
    // The narrowest panel that holds the leftover, if it is not too empty.
    for (int i = static_cast<int>(mrs.size()) - 1; i >= 0; --i) {
      if (mrs[i] < rem) continue;
      if (mrs[i] <= kMaxPanelPad * static_cast<double>(rem) && (pick < 0 || mrs[i] > mrs[pick]))
        pick = i;
      break;
    }
    if (pick < 0) {
      if (has_spmv && rem < kMinPanelRows) break;
      pick = static_cast<int>(mrs.size()) - 1;
    }
    const int64_t n = std::min<int64_t>(mrs[pick], rem);
    items.push_back({b, n, pick, nullptr});
    b += n;
  }
  if (b < batch) items.push_back({b, batch - b, -1, nullptr});
  return items;
}

}  // namespace detail
}  // namespace sparseprune
