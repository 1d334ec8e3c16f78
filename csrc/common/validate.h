// Full structural validation of packed CSR data, O(rows + nnz). Run once when data enters the
// library (packing, load_state_dict), never per call: kernels trust what passed here.
#pragma once
#include <string>

#include "csr.h"

namespace sparseprune {

// Empty string when valid, else a message naming the first problem (row, position, value).
// Checks: row_ptr[0] == 0, row_ptr non-decreasing, row_ptr[rows] == nnz, every column index in
// [0, cols), and indices strictly increasing within each row (sorted, no duplicates).
std::string validate_csr(const CsrMatrix& w, int64_t nnz);

}  // namespace sparseprune
