// K-blocked SELL-C layout of a CSR weight for the batch >= 4 SpMM path (design §3-4).
//
// Why: with the whole activation panel (K * MR floats: 256 KiB at K = 4096, MR = 16) every
// nonzero's panel row comes from L2, and the L2 -> L1 bandwidth caps the kernel near 4 cycles per
// nonzero on Zen 3. Here the weight is cut into tiles of kRowBlock rows x kColBlock columns, so a
// kernel walks one panel slice of kColBlock * MR floats (16 KiB) that stays in L1. Inside a tile,
// rows are sorted by their nonzero count and taken kChunk at a time in lockstep (zero-padded to
// the chunk's longest row): one loop exit per chunk instead of one mispredicted exit per row.
//
// Units: elements, never bytes. Built once from validated CSR, so kernels trust it.
#pragma once
#include <cstdint>
#include <vector>

#include "../common/linear_fn.h"
#include "csr_weight.h"

namespace sparseprune {

constexpr int kSellRowBlock = 128;  // rows per tile: the tile's partial sums stay in L1
constexpr int kSellColBlock = 256;  // columns per tile: offsets fit in uint8
constexpr int kSellChunk = 4;       // rows in lockstep
static_assert(kSellColBlock <= 256, "column offsets within a block are stored as uint8");

// Owns its arrays; the only copy of the weight at run time (no CSR kept beside it). Units are
// row blocks of kSellRowBlock rows.
struct SellWeight {
  static constexpr Format kFormat = Format::kSell;

  // Built from validated CSR, so the result needs no further check.
  explicit SellWeight(const CsrWeight& w);

  int64_t rows = 0, cols = 0, nnz = 0;
  int64_t row_blocks = 0, col_blocks = 0;
  // Chunks of tile t = rb * col_blocks + kb are [tile_chunk[t], tile_chunk[t + 1]).
  std::vector<int64_t> tile_chunk;
  // Chunk c: kSellChunk local row indices (kSellRowBlock = padding row, never written out) and
  // its steps [chunk_step[c], chunk_step[c + 1]).
  std::vector<int32_t> chunk_rows;
  std::vector<int64_t> chunk_step;
  // Step s holds one nonzero per chunk row: values[s * kSellChunk + i] at column
  // kb * kSellColBlock + offsets[s * kSellChunk + i]. Padding: value 0, offset 0.
  std::vector<float> values;
  std::vector<uint8_t> offsets;
  // Prefix sums of the nonzeros (+ padding, + a per-row cost) of the row blocks, to balance
  // threads: [row_blocks + 1].
  std::vector<int64_t> cost_prefix;

  int64_t units() const { return row_blocks; }
  static constexpr int64_t unit_rows() { return kSellRowBlock; }
  int64_t unit_cost(int64_t u) const { return cost_prefix[u]; }
  int64_t nbytes() const;

  // The canonical CSR arrays back (int32 columns). Padding is dropped, and so are stored values
  // that are exactly zero (they cannot be told from padding; they never change a result).
  void to_csr(std::vector<int64_t>& row_ptr, std::vector<int32_t>& col_idx,
              std::vector<float>& values) const;
};

// Kernels (LinearFn<SellWeight>) write rows [rb0 * kSellRowBlock, min(rb1 * kSellRowBlock,
// rows)) of y for one panel of MR batch rows (panel[k * MR + r] = x[r, k], zero for r >= nvalid). Padding multiplies 0 by panel entries, so
// a NaN/Inf in x may reach rows that have no weight on it (callers fix non-finite rows anyway).

}  // namespace sparseprune
