#include "sell_weight.h"

#include <algorithm>
#include <numeric>

namespace sparseprune {
namespace {

template <typename Idx>
void build(const CsrWeight& w, SellWeight& s) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx());
  std::vector<int64_t> cursor(kSellRowBlock);
  std::vector<int32_t> count(kSellRowBlock), order(kSellRowBlock);
  s.tile_chunk.push_back(0);
  s.chunk_step.push_back(0);
  s.cost_prefix.push_back(0);
  for (int64_t rb = 0; rb < s.row_blocks; ++rb) {
    const int64_t r0 = rb * kSellRowBlock;
    const int nr = static_cast<int>(std::min<int64_t>(kSellRowBlock, w.rows - r0));
    for (int i = 0; i < nr; ++i) cursor[i] = w.row_ptr[r0 + i];
    int64_t cost = 0;
    for (int64_t kb = 0; kb < s.col_blocks; ++kb) {
      const int64_t limit = std::min<int64_t>((kb + 1) * kSellColBlock, w.cols);
      int live = 0;
      for (int i = 0; i < nr; ++i) {
        int64_t j = cursor[i];
        const int64_t end = w.row_ptr[r0 + i + 1];
        while (j < end && static_cast<int64_t>(ci[j]) < limit) ++j;
        count[i] = static_cast<int32_t>(j - cursor[i]);
        if (count[i] > 0) order[live++] = i;
      }
      // Longest rows first, so each chunk of kSellChunk holds rows of similar length.
      std::stable_sort(order.begin(), order.begin() + live,
                       [&](int32_t a, int32_t b) { return count[a] > count[b]; });
      for (int c0 = 0; c0 < live; c0 += kSellChunk) {
        int32_t len = 0;
        for (int i = 0; i < kSellChunk; ++i) {
          const int slot = c0 + i;
          const int32_t row = slot < live ? order[slot] : kSellRowBlock;
          s.chunk_rows.push_back(row);
          if (slot < live) len = std::max(len, count[row]);
        }
        const size_t base = s.values.size();
        s.values.resize(base + static_cast<size_t>(len) * kSellChunk, 0.f);
        s.offsets.resize(base + static_cast<size_t>(len) * kSellChunk, 0);
        for (int i = 0; i < kSellChunk && c0 + i < live; ++i) {
          const int row = order[c0 + i];
          const int64_t j0 = cursor[row];
          for (int32_t t = 0; t < count[row]; ++t) {
            s.values[base + t * kSellChunk + i] = w.values[j0 + t];
            s.offsets[base + t * kSellChunk + i] =
                static_cast<uint8_t>(static_cast<int64_t>(ci[j0 + t]) - kb * kSellColBlock);
          }
          cursor[row] += count[row];
        }
        s.chunk_step.push_back(s.chunk_step.back() + len);
        cost += static_cast<int64_t>(len) * kSellChunk;
      }
      s.tile_chunk.push_back(static_cast<int64_t>(s.chunk_step.size()) - 1);
    }
    s.cost_prefix.push_back(s.cost_prefix.back() + cost + CsrWeight::kRowCost * nr);
  }
}

}  // namespace

int64_t SellWeight::nbytes() const {
  return static_cast<int64_t>(tile_chunk.size() * 8 + chunk_rows.size() * 4 +
                              chunk_step.size() * 8 + values.size() * 4 + offsets.size() +
                              cost_prefix.size() * 8);
}

SellWeight::SellWeight(const CsrWeight& w)
    : rows(w.rows),
      cols(w.cols),
      nnz(w.nnz),
      row_blocks((w.rows + kSellRowBlock - 1) / kSellRowBlock),
      col_blocks(std::max<int64_t>(1, (w.cols + kSellColBlock - 1) / kSellColBlock)) {
  if (w.index_bits == 16) {
    build<uint16_t>(w, *this);
  } else {
    build<int32_t>(w, *this);
  }
}

void SellWeight::to_csr(std::vector<int64_t>& row_ptr, std::vector<int32_t>& col_idx,
                        std::vector<float>& vals) const {
  // Collect (row, col, value) per row, then concatenate: within a row, tiles come in column
  // order and a row's entries inside one tile are sorted, so each row comes out sorted.
  std::vector<std::vector<std::pair<int32_t, float>>> per_row(static_cast<size_t>(rows));
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t kb = 0; kb < col_blocks; ++kb) {
      const int64_t t = rb * col_blocks + kb;
      for (int64_t c = tile_chunk[t]; c < tile_chunk[t + 1]; ++c) {
        for (int i = 0; i < kSellChunk; ++i) {
          const int32_t local = chunk_rows[c * kSellChunk + i];
          if (local >= kSellRowBlock) continue;
          auto& out = per_row[static_cast<size_t>(rb * kSellRowBlock + local)];
          for (int64_t st = chunk_step[c]; st < chunk_step[c + 1]; ++st) {
            const float v = values[st * kSellChunk + i];
            if (v == 0.f) continue;  // padding (or a stored exact zero)
            out.emplace_back(static_cast<int32_t>(kb * kSellColBlock + offsets[st * kSellChunk + i]), v);
          }
        }
      }
    }
  }
  row_ptr.assign(1, 0);
  col_idx.clear();
  vals.clear();
  for (const auto& r : per_row) {
    for (const auto& e : r) {
      col_idx.push_back(e.first);
      vals.push_back(e.second);
    }
    row_ptr.push_back(static_cast<int64_t>(col_idx.size()));
  }
}

}  // namespace sparseprune
