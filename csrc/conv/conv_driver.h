// The direct sparse convolution driver: prepares each image's input planes (conv_geometry.h),
// splits images, pixel tiles or output channels (by their kept taps, with the linear driver's
// splitter) across threads and runs one kernel row over every image.
// y: [batch, O, out_h, out_w] contiguous.
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
  // Junk columns (wq > out_w) go to a scratch copy of the output, copied out afterwards.
  const bool compact = g.wq != g.out_w;
  const size_t xq_total = static_cast<size_t>(g.xq_floats) * batch;
  const size_t tmp_floats = compact ? static_cast<size_t>(batch * w.rows * g.pixels) : 0;
  float* scratch = xq_total + tmp_floats ? panel_scratch(xq_total + tmp_floats) : nullptr;
  float* xq = scratch;
  float* tmp = scratch ? scratch + xq_total : nullptr;

  const int64_t work = w.unit_cost(w.units()) * g.pixels * batch;
  const int nt = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({nthreads, w.units() * batch * g.pixels, work / kMinWorkPerThread})));

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

  auto input = [&](int64_t n) { return g.direct ? x + n * in_floats : xq + n * g.xq_floats; };
  auto output = [&](int64_t n) {
    return compact ? tmp + n * w.rows * g.pixels : y + n * w.rows * out_plane;
  };
  const int64_t ldo = compact ? g.pixels : out_plane;
  auto copy_out = [&](int64_t n, int64_t o0, int64_t o1) {
    if (!compact) return;
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t i = 0; i < g.out_h; ++i)
        std::memcpy(y + (n * w.rows + o) * out_plane + i * g.out_w,
                    tmp + (n * w.rows + o) * g.pixels + i * g.wq, sizeof(float) * g.out_w);
  };
  // How threads share the work. Every thread should walk all output channels over the input
  // slices it loads (the channel blocks' L1 reuse is over channels): so whole images when
  // there are enough, else ranges of pixel tiles, else (small outputs: a 7 x 7 layer is one
  // tile) ranges of channels balanced by their kept taps. Chunks are taken dynamically.
  const int64_t units = w.units();
  const int64_t tiles = (g.pixels + g.px - 1) / g.px;
  std::atomic<int64_t> next{0};
  if (nt == 1 || batch % nt == 0 || batch >= 4 * nt) {
    parallel_run(nt, [&](int) {
      for (int64_t n = next.fetch_add(1); n < batch; n = next.fetch_add(1)) {
        fn(w, g, input(n), bias, output(n), ldo, 0, units, 0, g.pixels);
        copy_out(n, 0, w.rows);
      }
    });
  } else if (tiles >= 2 * nt) {
    const int64_t nchunks = std::min<int64_t>(tiles, int64_t{nt} * kChunksPerThread);
    parallel_run(nt, [&](int) {
      for (int64_t c = next.fetch_add(1); c < batch * nchunks; c = next.fetch_add(1)) {
        const int64_t n = c / nchunks, k = c % nchunks;
        const int64_t pb = tiles * k / nchunks * g.px;
        const int64_t pe = std::min(g.pixels, tiles * (k + 1) / nchunks * g.px);
        if (pb < pe) fn(w, g, input(n), bias, output(n), ldo, 0, units, pb, pe);
      }
    });
    if (compact) {  // rows span chunks: copied out once every chunk is done
      const int64_t jobs = batch * w.rows;
      const int np = static_cast<int>(std::min<int64_t>(nt, jobs));
      parallel_run(np, [&](int tid) {
        for (int64_t j = jobs * tid / np; j < jobs * (tid + 1) / np; ++j)
          copy_out(j / w.rows, j % w.rows, j % w.rows + 1);
      });
    }
  } else {
    const std::vector<int64_t> bounds = cost_bounds(w, nt);
    const int64_t nchunks = static_cast<int64_t>(bounds.size()) - 1;
    parallel_run(nt, [&](int) {
      for (int64_t c = next.fetch_add(1); c < nchunks; c = next.fetch_add(1)) {
        const int64_t u0 = bounds[c], u1 = bounds[c + 1];
        if (u0 >= u1) continue;
        const int64_t o0 = u0 * w.unit_rows(), o1 = std::min(w.rows, u1 * w.unit_rows());
        for (int64_t n = 0; n < batch; ++n) {
          fn(w, g, input(n), bias, output(n), ldo, u0, u1, 0, g.pixels);
          copy_out(n, o0, o1);
        }
      }
    });
  }
  release_large_scratch(xq_total + tmp_floats);
}

}  // namespace sparseprune
