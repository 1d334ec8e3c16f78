// BsrWeight: W [rows, cols] as dense r x c blocks on a block grid (block sparse rows), owned and
// validated (rows = output features, cols = input features). Block shapes with a fast kernel
// path: 4x1, 8x1, 16x1 (one x[k] broadcast feeds r outputs), 1x4 and 4x4; any r, c in 1..16
// runs through a generic path.
//
// Canonical layout (what a state_dict stores, sparseprune/formats/bsr.py): block_row_ptr int64
// [block_rows + 1], block_col int32 [nblocks] (strictly increasing within a block row), values
// float32 [nblocks, r, c] row-major; entry (a, b) of block j of block row i is
// W[i * r + a, block_col[j] * c + b]. Entries of edge blocks outside the matrix are 0.
//
// Internal layout: the canonical arrays themselves. Why no re-layout: row-major blocks are what
// the kernels want. An r x 1 block is r contiguous weights (one vector load for r outputs), an
// r x 4 block is r rows of 4 that a 4-float x chunk broadcast per 128-bit lane multiplies row by
// row, and the SpMM kernels broadcast every value from memory in any order. The column offset
// of a block is block_col * c, a shift on a compile-time c: storing it would only add bytes.
// Edge blocks: only the last block of a block row can sit on the last block column; when cols %
// c != 0 kernels take that block apart (full_end) so they never read x past cols.
//
// Units: elements, never bytes. A unit is one block row (r output rows; the last may be short).
#pragma once
#include <cstdint>
#include <vector>

#include "../common/buffer.h"
#include "../common/linear_fn.h"

namespace sparseprune {

class BsrWeight {
 public:
  static constexpr Format kFormat = Format::kBsr;
  static constexpr int64_t kMaxBlock = 16;  // r, c <= 16: kernels keep a block row's sums on
                                            // the stack in fixed arrays of 16 rows
  // Thread-balancing cost: per block (index load, address) and per block row (stores) in
  // multiply-add equivalents, on top of r * c multiply-adds per block.
  static constexpr int64_t kBlockCost = 1;
  static constexpr int64_t kRowCost = 4;

  // Copies the canonical arrays after a full O(block_rows + nblocks * r * c) check; throws
  // std::invalid_argument naming the first problem (block row, position, value).
  BsrWeight(int64_t rows, int64_t cols, int64_t r, int64_t c, const int64_t* block_row_ptr,
            int64_t brp_len, const int32_t* block_col, int64_t bc_len, const float* values,
            int64_t values_len);

  int64_t rows = 0, cols = 0, r = 1, c = 1;
  int64_t block_rows = 0;  // ceil(rows / r)
  int64_t block_cols = 0;  // ceil(cols / c)
  int64_t nblocks = 0;
  // Valid columns of a block on the last block column: c, or cols % c when that is not zero.
  int64_t edge_c = 0;

  Buffer<int64_t> block_row_ptr;  // [block_rows + 1]
  Buffer<int32_t> block_col;      // [nblocks]
  Buffer<float> values;           // [nblocks * r * c], block j at values + j * r * c

  // Blocks [block_row_ptr[i], full_end(i)) of block row i lie wholly inside the columns; a block
  // at full_end(i) < block_row_ptr[i + 1] is the edge block, with edge_c valid columns.
  // (Defined in bsr_weight.cpp, not inline here: an inline member compiled into the AVX-512
  // kernel files could become the one copy the scalar kernels call.)
  int64_t full_end(int64_t i) const;

  void to_canonical(std::vector<int64_t>& block_row_ptr_out, std::vector<int32_t>& block_col_out,
                    std::vector<float>& values_out) const;

  int64_t units() const { return block_rows; }
  int64_t unit_rows() const { return r; }
  // Prefix sum of unit costs: cost of units [0, u).
  int64_t unit_cost(int64_t u) const {
    return block_row_ptr[u] * (r * c + kBlockCost) + u * kRowCost * r;
  }
  int64_t nbytes() const {
    return static_cast<int64_t>(block_row_ptr.nbytes() + block_col.nbytes() + values.nbytes());
  }
};

}  // namespace sparseprune
