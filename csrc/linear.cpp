#include "linear.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "common/thread_pool.h"

namespace sparseprune {
namespace {

// Below this many multiply-adds a second thread costs more (wake-up, ~10 us) than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 16;
// Per-row cost in "nonzeros" used when balancing rows across threads (loop setup, stores).
constexpr int64_t kRowCost = 4;
// Work chunks per thread (taken dynamically; see csr_linear).
constexpr int64_t kChunksPerThread = 4;

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

// Panel buffers up to this size stay allocated between calls; a larger one (a huge batch) is
// freed after its call instead of pinning that memory for the life of the thread.
constexpr size_t kKeepScratchFloats = size_t{4} << 20;  // 16 MiB

// A per-calling-thread scratch buffer for activation panels, grown on demand, 64-byte aligned
// (a misaligned panel costs up to 1.7x in the prototype). floats = 0 releases it.
float* panel_scratch(size_t floats) {
  thread_local std::unique_ptr<float, AlignedFree> buf;
  thread_local size_t cap = 0;
  if (floats == 0) {
    buf.reset();
    cap = 0;
    return nullptr;
  }
  if (floats > cap) {
    const size_t bytes = ((floats * sizeof(float) + 63) / 64) * 64;
    buf.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    cap = buf ? bytes / sizeof(float) : 0;
    // Thrown before any thread starts; pybind11 turns it into MemoryError.
    if (!buf) throw std::bad_alloc();
  }
  return buf.get();
}

struct Item {
  int64_t b0;      // first batch row
  int64_t nvalid;  // batch rows
  int mr;          // panel width, 0 for spmv rows
  SpmmFn mm;       // null for spmv rows and sell panels
  float* panel;
  SellFn sell;     // set for sell panels
};

void pack_panel(const float* x, int64_t ldx, int64_t nvalid, int64_t K, int mr, float* panel) {
  // Walk k in blocks so each of the nvalid source rows streams sequentially.
  constexpr int64_t kKb = 64;
  for (int64_t k0 = 0; k0 < K; k0 += kKb) {
    const int64_t k1 = std::min(K, k0 + kKb);
    for (int64_t r = 0; r < nvalid; ++r) {
      const float* src = x + r * ldx;
      for (int64_t k = k0; k < k1; ++k) panel[k * mr + r] = src[k];
    }
    for (int64_t r = nvalid; r < mr; ++r)
      for (int64_t k = k0; k < k1; ++k) panel[k * mr + r] = 0.f;
  }
}

std::vector<Item> plan_items(int64_t batch, const LinearKernels& k, bool use_sell) {
  std::vector<Item> items;
  int64_t b = 0;
  if (use_sell) {
    const bool sell_only = k.spmv == nullptr && k.spmm_big == nullptr;
    for (; batch - b >= k.mr_sell || (sell_only && batch > b); b += k.mr_sell)
      items.push_back({b, std::min<int64_t>(k.mr_sell, batch - b), k.mr_sell, nullptr, nullptr,
                       k.sell});
    // A padded small panel still beats CSR panels from kMinPanelRows rows on (1.1-1.5x at
    // batch 4, 70-90 %, measured), so the remainder goes to small panels while that many rows
    // are left.
    while (k.sell_small != nullptr && batch - b >= kMinPanelRows) {
      const int64_t n = std::min<int64_t>(k.mr_sell_small, batch - b);
      items.push_back({b, n, k.mr_sell_small, nullptr, nullptr, k.sell_small});
      b += n;
    }
  }
  if (k.spmm_big != nullptr) {
    const bool panels_only = k.spmv == nullptr;
    if (panels_only || batch >= kMinPanelRows) {
      for (; batch - b >= k.mr_big; b += k.mr_big)
        items.push_back({b, k.mr_big, k.mr_big, k.spmm_big, nullptr, nullptr});
      SpmmFn small = k.spmm_small ? k.spmm_small : k.spmm_big;
      const int mr_small = k.spmm_small ? k.mr_small : k.mr_big;
      while (batch - b >= kMinPanelRows || (panels_only && batch > b)) {
        const int64_t n = std::min<int64_t>(mr_small, batch - b);
        items.push_back({b, n, mr_small, small, nullptr, nullptr});
        b += n;
      }
    }
  }
  if (b < batch) items.push_back({b, batch - b, 0, nullptr, nullptr, nullptr});
  return items;
}

}  // namespace

const LinearKernels& default_linear_kernels() {
  static const LinearKernels chosen = [] {
    LinearKernels k;
    for (const KernelInfo& info : all_kernels()) {
      if (!cpu_supports(info) || !isa_allowed(info)) continue;
      if (std::strcmp(info.format, "sell") == 0) {
        if (k.sell == nullptr) {
          k.sell = reinterpret_cast<SellFn>(info.fn);
          k.mr_sell = info.mr;
        } else if (k.sell_small == nullptr && info.mr < k.mr_sell) {
          k.sell_small = reinterpret_cast<SellFn>(info.fn);
          k.mr_sell_small = info.mr;
        }
      } else if (std::strcmp(info.family, "spmv") == 0) {
        if (k.spmv == nullptr) k.spmv = reinterpret_cast<SpmvFn>(info.fn);
      } else if (std::strcmp(info.family, "spmm") == 0) {
        // Table rows are ordered by preference: the first runnable row is the big panel, the
        // first runnable row with a narrower panel is the small one.
        if (k.spmm_big == nullptr) {
          k.spmm_big = reinterpret_cast<SpmmFn>(info.fn);
          k.mr_big = info.mr;
        } else if (k.spmm_small == nullptr && info.mr < k.mr_big) {
          k.spmm_small = reinterpret_cast<SpmmFn>(info.fn);
          k.mr_small = info.mr;
        }
      }
    }
    return k;
  }();
  return chosen;
}

LinearKernels single_kernel(const KernelInfo& info) {
  LinearKernels k;
  if (std::strcmp(info.format, "sell") == 0) {
    k.sell = reinterpret_cast<SellFn>(info.fn);
    k.mr_sell = info.mr;
  } else if (std::strcmp(info.family, "spmv") == 0) {
    k.spmv = reinterpret_cast<SpmvFn>(info.fn);
  } else {
    k.spmm_big = reinterpret_cast<SpmmFn>(info.fn);
    k.mr_big = info.mr;
  }
  return k;
}

void csr_linear(const CsrMatrix& w, const SellPack* sell, const float* x, int64_t batch,
                int64_t ldx, const float* bias, float* y, int64_t ldy, int nthreads,
                const LinearKernels& k) {
  if (batch <= 0 || w.rows <= 0) return;
  // Sell kernels split threads by 128-row blocks: a layer with fewer blocks than threads would
  // leave threads idle, so it stays on the CSR panels, which split by rows.
  const bool use_sell = sell != nullptr && k.sell != nullptr &&
                        (nthreads <= 1 || sell->row_blocks >= nthreads ||
                         (k.spmm_big == nullptr && k.spmv == nullptr));
  std::vector<Item> items = plan_items(batch, k, use_sell);

  size_t panel_floats = 0;
  for (const Item& it : items) panel_floats += static_cast<size_t>(it.mr) * w.cols;
  float* scratch = panel_floats ? panel_scratch(panel_floats) : nullptr;
  size_t off = 0;
  for (Item& it : items) {
    if (it.mr == 0) continue;
    it.panel = scratch + off;
    // mr is a multiple of 8 floats (checked where kernels are chosen), so every panel stays
    // 32-byte aligned: one aligned ymm load per 8 floats.
    off += static_cast<size_t>(it.mr) * w.cols;
  }

  const int64_t nnz = w.row_ptr[w.rows];
  const int64_t work = (nnz + kRowCost * w.rows) * batch;
  // Sell kernels take whole row blocks, so threads then split row blocks, not rows.
  const int64_t units = use_sell ? sell->row_blocks : w.rows;
  int64_t t = std::max<int64_t>(1, std::min<int64_t>({nthreads, units, work / kMinWorkPerThread}));
  const int nt = static_cast<int>(t);

  // Unit bounds with equal shares of nonzeros (+ a per-row cost): pruned rows are uneven.
  // Units are cut into kChunksPerThread chunks per thread of equal cost (nonzeros + a per-row
  // cost: pruned rows are uneven), and threads take chunks from a shared counter: when another
  // process holds a core, the thread that still runs takes over the rest instead of waiting.
  const int64_t nchunks = nt > 1 ? std::min<int64_t>(units, int64_t{nt} * kChunksPerThread) : 1;
  std::vector<int64_t> bounds(nchunks + 1, units);
  bounds[0] = 0;
  if (nchunks > 1) {
    std::vector<int64_t> cost(units + 1, 0);
    for (int64_t u = 0; u < units; ++u) {
      cost[u + 1] = cost[u] + (use_sell ? sell->row_block_cost[u]
                                        : w.row_ptr[u + 1] - w.row_ptr[u] + kRowCost);
    }
    for (int64_t i = 1; i < nchunks; ++i) {
      const int64_t target = cost[units] * i / nchunks;
      bounds[i] = std::lower_bound(cost.begin() + bounds[i - 1], cost.end(), target) -
                  cost.begin();
      bounds[i] = std::min(bounds[i], units);
    }
  }
  const int64_t row_scale = use_sell ? kSellRowBlock : 1;

  const int nitems = static_cast<int>(items.size());
  parallel_run(nt, [&](int tid) {
    for (int i = tid; i < nitems; i += nt) {
      const Item& it = items[i];
      if (it.mr) pack_panel(x + it.b0 * ldx, ldx, it.nvalid, w.cols, it.mr, it.panel);
    }
  });
  std::atomic<int64_t> next_chunk{0};
  parallel_run(nt, [&](int) {
    for (int64_t c = next_chunk.fetch_add(1); c < nchunks; c = next_chunk.fetch_add(1)) {
      const int64_t u0 = bounds[c], u1 = bounds[c + 1];
      if (u0 >= u1) continue;
      const int64_t r0 = u0 * row_scale, r1 = std::min(u1 * row_scale, w.rows);
      for (const Item& it : items) {
        if (it.sell) {
          it.sell(*sell, it.panel, it.nvalid, bias, y + it.b0 * ldy, ldy, u0, u1);
        } else if (it.mr) {
          it.mm(w, it.panel, it.nvalid, bias, y + it.b0 * ldy, ldy, r0, r1);
        } else {
          for (int64_t b = it.b0; b < it.b0 + it.nvalid; ++b)
            k.spmv(w, x + b * ldx, bias, y + b * ldy, r0, r1);
        }
      }
    }
  });
  if (panel_floats > kKeepScratchFloats) panel_scratch(0);
}

}  // namespace sparseprune
