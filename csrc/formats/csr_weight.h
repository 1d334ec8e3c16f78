// CsrWeight: W [rows, cols] in compressed sparse rows, owned and validated (rows = output
// features, cols = input features). The canonical form of every unstructured weight: what a
// state_dict stores (sparseprune/formats/csr.py documents the same layout).
//
// Units: elements, never bytes. A unit is one row.
#pragma once
#include <cstdint>
#include <string>

#include "../common/buffer.h"
#include "../common/linear_fn.h"

namespace sparseprune {

class CsrWeight {
 public:
  static constexpr Format kFormat = Format::kCsr;
  // Per-row cost in multiply-adds charged for loop setup and stores when balancing threads.
  static constexpr int64_t kRowCost = 4;

  // Copies the arrays after a full O(rows + nnz) check; throws std::invalid_argument naming the
  // first problem (row, position, value). col_idx is uint16 when index_bits == 16 (then cols
  // must be <= 65536), else int32; indices sorted and unique within each row.
  CsrWeight(int64_t rows, int64_t cols, const int64_t* row_ptr, int64_t row_ptr_len,
            const void* col_idx, int index_bits, int64_t col_len, const float* values,
            int64_t values_len);

  int64_t rows = 0, cols = 0, nnz = 0;
  int index_bits = 32;
  Buffer<int64_t> row_ptr;  // [rows + 1]
  Buffer<uint16_t> col16;   // [nnz] when index_bits == 16
  Buffer<int32_t> col32;    // [nnz] when index_bits == 32
  Buffer<float> values;     // [nnz]

  const void* col_idx() const {
    return index_bits == 16 ? static_cast<const void*>(col16.data())
                            : static_cast<const void*>(col32.data());
  }
  int64_t units() const { return rows; }
  static constexpr int64_t unit_rows() { return 1; }
  // Prefix sum of unit costs: cost of units [0, u).
  int64_t unit_cost(int64_t u) const { return row_ptr[u] + kRowCost * u; }
  int64_t nbytes() const {
    return static_cast<int64_t>(row_ptr.nbytes() + col16.nbytes() + col32.nbytes() +
                                values.nbytes());
  }
};

// The problem with CSR arrays ("" when valid): the check CsrWeight's constructor runs.
std::string csr_problem(int64_t rows, int64_t cols, const int64_t* row_ptr, const void* col_idx,
                        int index_bits, int64_t nnz);

}  // namespace sparseprune
