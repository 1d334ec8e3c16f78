#include "csr_weight.h"

#include <stdexcept>
#include <string>

namespace sparseprune {
namespace {

template <typename Idx>
std::string check_columns(int64_t rows, int64_t cols, const int64_t* row_ptr, const Idx* ci) {
  for (int64_t o = 0; o < rows; ++o) {
    int64_t prev = -1;
    for (int64_t j = row_ptr[o]; j < row_ptr[o + 1]; ++j) {
      const int64_t c = static_cast<int64_t>(ci[j]);
      if (c < 0 || c >= cols)
        return "col_idx[" + std::to_string(j) + "] = " + std::to_string(c) + " in row " +
               std::to_string(o) + " is out of range [0, " + std::to_string(cols) + ")";
      if (c <= prev)
        return "col_idx in row " + std::to_string(o) + " is not strictly increasing at position " +
               std::to_string(j) + " (" + std::to_string(prev) + " then " + std::to_string(c) +
               ")";
      prev = c;
    }
  }
  return {};
}

}  // namespace

std::string csr_problem(int64_t rows, int64_t cols, const int64_t* row_ptr, const void* col_idx,
                        int index_bits, int64_t nnz) {
  if (rows < 0 || cols < 0)
    return "negative shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  if (index_bits == 16 && cols > 65536)
    return "uint16 col_idx needs cols <= 65536, got cols = " + std::to_string(cols);
  if (row_ptr[0] != 0) return "row_ptr[0] = " + std::to_string(row_ptr[0]) + ", expected 0";
  for (int64_t o = 0; o < rows; ++o) {
    if (row_ptr[o + 1] < row_ptr[o])
      return "row_ptr decreases at row " + std::to_string(o) + " (" + std::to_string(row_ptr[o]) +
             " then " + std::to_string(row_ptr[o + 1]) + ")";
    if (row_ptr[o + 1] > nnz)
      return "row_ptr[" + std::to_string(o + 1) + "] = " + std::to_string(row_ptr[o + 1]) +
             " exceeds nnz = " + std::to_string(nnz);
  }
  if (row_ptr[rows] != nnz)
    return "row_ptr[-1] = " + std::to_string(row_ptr[rows]) + " but there are " +
           std::to_string(nnz) + " values";
  if (index_bits == 16)
    return check_columns(rows, cols, row_ptr, static_cast<const uint16_t*>(col_idx));
  return check_columns(rows, cols, row_ptr, static_cast<const int32_t*>(col_idx));
}

CsrWeight::CsrWeight(int64_t rows_, int64_t cols_, const int64_t* rp, int64_t row_ptr_len,
                     const void* ci, int bits, int64_t col_len, const float* v,
                     int64_t values_len)
    : rows(rows_), cols(cols_), nnz(values_len), index_bits(bits) {
  auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (rows < 0 || cols < 0)
    fail("negative shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  if (bits != 16 && bits != 32) fail("col_idx must be uint16 or int32");
  if (row_ptr_len != rows + 1)
    fail("row_ptr has " + std::to_string(row_ptr_len) + " entries, expected rows + 1 = " +
         std::to_string(rows + 1));
  if (col_len != values_len)
    fail("col_idx has " + std::to_string(col_len) + " entries but values has " +
         std::to_string(values_len));
  const std::string problem = csr_problem(rows, cols, rp, ci, bits, values_len);
  if (!problem.empty()) fail(problem);
  row_ptr = Buffer<int64_t>(rp, static_cast<size_t>(rows + 1));
  if (bits == 16) {
    col16 = Buffer<uint16_t>(static_cast<const uint16_t*>(ci), static_cast<size_t>(nnz));
  } else {
    col32 = Buffer<int32_t>(static_cast<const int32_t*>(ci), static_cast<size_t>(nnz));
  }
  values = Buffer<float>(v, static_cast<size_t>(nnz));
}

}  // namespace sparseprune
