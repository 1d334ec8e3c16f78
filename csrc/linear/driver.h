// The generic linear driver: y = x W^T + b for any weight type W with units (see
// common/linear_fn.h). It cuts the batch into activation panels and small-batch rows, packs the
// panels, splits W's units across threads by cost, and calls the plan's kernels. Every format
// with row units runs through here; only the kernels differ.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "../common/linear_fn.h"
#include "../common/thread_pool.h"

namespace sparseprune {

// Fewer leftover batch rows than this go to the spmv kernel rather than a padded panel.
constexpr int64_t kMinPanelRows = 4;

template <class W>
struct PanelKernel {
  LinearFn<W> fn = nullptr;
  int mr = 0;  // batch rows per panel, a multiple of 8
};

// The kernels one call may use: spmv for rows, panels ordered widest first. A plan with no
// panels sends every row to spmv; one with no spmv pads every leftover into a panel.
template <class W>
struct LinearPlan {
  LinearFn<W> spmv = nullptr;
  std::vector<PanelKernel<W>> panels;
};

namespace detail {

// Below this many multiply-adds a second thread costs more (wake-up, ~10 us) than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 16;
// Work chunks per thread, taken dynamically: when another process holds a core, the thread
// that still runs takes over the rest instead of waiting.
constexpr int64_t kChunksPerThread = 4;

struct Item {
  int64_t b0;      // first batch row
  int64_t nvalid;  // batch rows
  int panel;       // index into plan.panels, -1 for spmv rows
  float* data;     // the packed panel
};

std::vector<Item> plan_items(int64_t batch, const std::vector<int>& mrs, bool has_spmv);
float* panel_scratch(size_t floats);  // per calling thread, 64-B aligned; 0 frees it
void release_large_scratch(size_t floats);
void pack_panel(const float* x, int64_t ldx, int64_t nvalid, int64_t K, int mr, float* panel);

// Unit bounds of the work chunks for nt threads (kChunksPerThread each, taken dynamically),
// with equal shares of W's unit cost: pruned rows are uneven. [nchunks + 1] entries.
template <class W>
std::vector<int64_t> cost_bounds(const W& w, int nt) {
  const int64_t units = w.units();
  const int64_t total = w.unit_cost(units);
  const int64_t nchunks = nt > 1 ? std::min<int64_t>(units, int64_t{nt} * kChunksPerThread) : 1;
  std::vector<int64_t> bounds(nchunks + 1, units);
  bounds[0] = 0;
  for (int64_t i = 1; i < nchunks; ++i) {
    const int64_t target = total * i / nchunks;
    int64_t lo = bounds[i - 1], hi = units;  // first u with unit_cost(u) >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (w.unit_cost(mid) < target) lo = mid + 1; else hi = mid;
    }
    bounds[i] = lo;
  }
  return bounds;
}

}  // namespace detail

// x: [batch, w.cols] with row stride ldx; y: [batch, w.rows] with row stride ldy; bias:
// [w.rows] or null. Inputs must already be validated. Uses up to nthreads threads (>= 1).
template <class W>
void run_linear(const W& w, const LinearPlan<W>& plan, const float* x, int64_t batch,
                int64_t ldx, const float* bias, float* y, int64_t ldy, int nthreads) {
  using namespace detail;
  if (batch <= 0 || w.rows <= 0) return;
  std::vector<int> mrs;
  for (const auto& p : plan.panels) mrs.push_back(p.mr);
  std::vector<Item> items = plan_items(batch, mrs, plan.spmv != nullptr);

  size_t panel_floats = 0;
  for (const Item& it : items)
    if (it.panel >= 0) panel_floats += static_cast<size_t>(plan.panels[it.panel].mr) * w.cols;
  float* scratch = panel_floats ? panel_scratch(panel_floats) : nullptr;
  size_t off = 0;
  for (Item& it : items) {
    if (it.panel < 0) continue;
    it.data = scratch + off;
    // mr is a multiple of 8 floats: panels stay 32-byte aligned, 64 when mr % 16 == 0.
    off += static_cast<size_t>(plan.panels[it.panel].mr) * w.cols;
  }

  const int64_t units = w.units();
  const int64_t total = w.unit_cost(units);
  const int64_t work = total * batch;
  const int nt = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({nthreads, units, work / kMinWorkPerThread})));
  const std::vector<int64_t> bounds = cost_bounds(w, nt);
  const int64_t nchunks = static_cast<int64_t>(bounds.size()) - 1;

  const int nitems = static_cast<int>(items.size());
  if (panel_floats) {
    parallel_run(std::min(nt, nitems), [&](int tid) {
      for (int i = tid; i < nitems; i += std::min(nt, nitems)) {
        const Item& it = items[i];
        if (it.panel >= 0)
          pack_panel(x + it.b0 * ldx, ldx, it.nvalid, w.cols, plan.panels[it.panel].mr, it.data);
      }
    });
  }
  std::atomic<int64_t> next_chunk{0};
  parallel_run(nt, [&](int) {
    for (int64_t c = next_chunk.fetch_add(1); c < nchunks; c = next_chunk.fetch_add(1)) {
      const int64_t u0 = bounds[c], u1 = bounds[c + 1];
      if (u0 >= u1) continue;
      for (const Item& it : items) {
        if (it.panel >= 0) {
          const PanelKernel<W>& p = plan.panels[it.panel];
          p.fn(w, it.data, it.nvalid, p.mr, bias, y + it.b0 * ldy, ldy, u0, u1);
        } else {
          plan.spmv(w, x + it.b0 * ldx, it.nvalid, ldx, bias, y + it.b0 * ldy, ldy, u0, u1);
        }
      }
    }
  });
  release_large_scratch(panel_floats);
}

}  // namespace sparseprune
