// The direct sparse convolution driver: prepares each image's input planes (conv_geometry.h),
// splits the output channels across threads by their kept taps (the linear driver's splitter)
// and runs one kernel row over every image. y: [batch, O, out_h, out_w] contiguous.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "../common/thread_pool.h"
#include "../linear/driver.h"
#include "conv_fn.h"

namespace sparseprune {

// x: [batch, C, H, W] contiguous; bias: [O] or null. Inputs must already be validated and g
// built from w. Uses up to nthreads threads (>= 1).
template <class W>
void run_conv(const W& w, const ConvGeometry& g, ConvFn<W> fn, const float* x, int64_t batch,
              const float* bias, float* y, int nthreads) {
  using namespace detail;
  if (batch <= 0 || w.rows <= 0) return;
  const ConvSpec& s = g.spec;
  const int64_t in_floats = s.channels * s.height * s.width;
  const int64_t out_plane = g.out_h * g.out_w;
  // Junk columns (wq > out_w) go to a scratch row block, copied out by the thread owning it.
  const bool compact = g.wq != g.out_w;
  const size_t xq_total = static_cast<size_t>(g.xq_floats) * batch;
  const size_t tmp_floats = compact ? static_cast<size_t>(w.rows) * g.pixels : 0;
  float* scratch = xq_total + tmp_floats ? panel_scratch(xq_total + tmp_floats) : nullptr;
  float* xq = scratch;
  float* tmp = scratch ? scratch + xq_total : nullptr;

  const int64_t work = w.unit_cost(w.units()) * g.pixels * batch;
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({nthreads, w.units(), work / kMinWorkPerThread})));

  if (!g.direct) {
    const int64_t jobs = batch * s.channels;  // (image, channel) pairs
    const int np = static_cast<int>(std::min<int64_t>(nt, jobs));
    parallel_run(np, [&](int tid) {
      const int64_t j0 = jobs * tid / np, j1 = jobs * (tid + 1) / np;
      for (int64_t j = j0; j < j1;) {
        const int64_t n = j / s.channels, c0 = j % s.channels;
        const int64_t c1 = std::min(s.channels, c0 + (j1 - j));
        prepare_conv_input(g, x + n * in_floats, xq + n * g.xq_floats, c0, c1);
        j += c1 - c0;
      }
    });
  }

  const std::vector<int64_t> bounds = cost_bounds(w, nt);
  const int64_t nchunks = static_cast<int64_t>(bounds.size()) - 1;
  std::atomic<int64_t> next_chunk{0};
  parallel_run(nt, [&](int) {
    for (int64_t c = next_chunk.fetch_add(1); c < nchunks; c = next_chunk.fetch_add(1)) {
      const int64_t u0 = bounds[c], u1 = bounds[c + 1];
      if (u0 >= u1) continue;
      const int64_t o0 = u0 * w.unit_rows(), o1 = std::min(w.rows, u1 * w.unit_rows());
      for (int64_t n = 0; n < batch; ++n) {
        const float* in = g.direct ? x + n * in_floats : xq + n * g.xq_floats;
        float* out = y + n * w.rows * out_plane;
        if (!compact) {
          fn(w, g, in, bias, out, out_plane, u0, u1);
          continue;
        }
        fn(w, g, in, bias, tmp, g.pixels, u0, u1);
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t i = 0; i < g.out_h; ++i)
            std::memcpy(out + o * out_plane + i * g.out_w, tmp + o * g.pixels + i * g.wq,
                        sizeof(float) * g.out_w);
      }
    }
  });
  release_large_scratch(xq_total + tmp_floats);
}

}  // namespace sparseprune
