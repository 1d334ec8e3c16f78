#include "validate.h"

#include <string>

namespace sparseprune {
namespace {

template <typename Idx>
std::string check_columns(const CsrMatrix& w) {
  const Idx* ci = static_cast<const Idx*>(w.col_idx);
  for (int64_t o = 0; o < w.rows; ++o) {
    int64_t prev = -1;
    for (int64_t j = w.row_ptr[o]; j < w.row_ptr[o + 1]; ++j) {
      const int64_t c = static_cast<int64_t>(ci[j]);
      if (c < 0 || c >= w.cols)
        return "col_idx[" + std::to_string(j) + "] = " + std::to_string(c) + " in row " +
               std::to_string(o) + " is out of range [0, " + std::to_string(w.cols) + ")";
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

std::string validate_csr(const CsrMatrix& w, int64_t nnz) {
  if (w.rows < 0 || w.cols < 0) return "negative shape";
  if (w.row_ptr[0] != 0) return "row_ptr[0] = " + std::to_string(w.row_ptr[0]) + ", expected 0";
  for (int64_t o = 0; o < w.rows; ++o) {
    if (w.row_ptr[o + 1] < w.row_ptr[o])
      return "row_ptr decreases at row " + std::to_string(o) + " (" +
             std::to_string(w.row_ptr[o]) + " then " + std::to_string(w.row_ptr[o + 1]) + ")";
    if (w.row_ptr[o + 1] > nnz)
      return "row_ptr[" + std::to_string(o + 1) + "] = " + std::to_string(w.row_ptr[o + 1]) +
             " exceeds nnz = " + std::to_string(nnz);
  }
  if (w.row_ptr[w.rows] != nnz)
    return "row_ptr[-1] = " + std::to_string(w.row_ptr[w.rows]) + " but there are " +
           std::to_string(nnz) + " values";
  if (w.index_bits == 16) return check_columns<uint16_t>(w);
  return check_columns<int32_t>(w);
}

}  // namespace sparseprune
