#include "bsr_weight.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace sparseprune {
namespace {

[[noreturn]] void fail(const std::string& m) { throw std::invalid_argument("BSR: " + m); }

std::string str(int64_t v) { return std::to_string(v); }

// %g, not to_string's %f: a stray 1e-9 must not print as 0.000000.
std::string str(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

}  // namespace

BsrWeight::BsrWeight(int64_t rows_, int64_t cols_, int64_t r_, int64_t c_, const int64_t* brp,
                     int64_t brp_len, const int32_t* bc, int64_t bc_len, const float* v,
                     int64_t values_len)
    : rows(rows_), cols(cols_), r(r_), c(c_) {
  if (r < 1 || r > kMaxBlock || c < 1 || c > kMaxBlock)
    fail("block shape (" + str(r) + ", " + str(c) + ") must have 1 <= r, c <= 16");
  if (rows < 0 || cols < 0) fail("negative shape (" + str(rows) + ", " + str(cols) + ")");
  if (brp_len < 0 || bc_len < 0 || values_len < 0)
    fail("negative array length (" + str(brp_len) + ", " + str(bc_len) + ", " +
         str(values_len) + ")");
  // Written without rows + r - 1, which could overflow for absurd rows.
  block_rows = rows / r + (rows % r != 0);
  block_cols = cols / c + (cols % c != 0);
  edge_c = cols % c ? cols % c : c;
  nblocks = bc_len;
  if (brp_len != block_rows + 1)
    fail("block_row_ptr has " + str(brp_len) + " entries, expected block_rows + 1 = " +
         str(block_rows + 1));
  const int64_t rc = r * c;
  if (values_len % rc != 0 || values_len / rc != nblocks)
    fail("values has " + str(values_len) + " entries, expected nblocks * r * c = " +
         str(nblocks) + " * " + str(rc));
  if (!brp || (nblocks > 0 && (!bc || !v))) fail("null array with a nonzero length");
  if (brp[0] != 0) fail("block_row_ptr[0] = " + str(brp[0]) + ", expected 0");
  for (int64_t i = 0; i < block_rows; ++i) {
    if (brp[i + 1] < brp[i])
      fail("block_row_ptr decreases at block row " + str(i) + " (" + str(brp[i]) + " then " +
           str(brp[i + 1]) + ")");
    if (brp[i + 1] > nblocks)
      fail("block_row_ptr[" + str(i + 1) + "] = " + str(brp[i + 1]) + " exceeds nblocks = " +
           str(nblocks));
  }
  if (brp[block_rows] != nblocks)
    fail("block_row_ptr[-1] = " + str(brp[block_rows]) + " but block_col has " + str(nblocks) +
         " entries");
  for (int64_t i = 0; i < block_rows; ++i) {
    int64_t prev = -1;
    for (int64_t j = brp[i]; j < brp[i + 1]; ++j) {
      const int64_t col = bc[j];
      if (col < 0 || col >= block_cols)
        fail("block_col[" + str(j) + "] = " + str(col) + " in block row " + str(i) +
             " is out of range [0, " + str(block_cols) + ")");
      if (col <= prev)
        fail("block_col in block row " + str(i) + " is not strictly increasing at position " +
             str(j) + " (" + str(prev) + " then " + str(col) + ")");
      prev = col;
      // Entries outside the matrix: rows past `rows` (last block row) or columns past `cols`
      // (last block column). Kernels never read them, but a nonzero there would be a weight
      // that the dense matrix cannot hold, so the round trip to dense would lose it.
      const int64_t na = std::min(r, rows - i * r);
      const int64_t nb = col == block_cols - 1 ? edge_c : c;
      if (na == r && nb == c) continue;
      for (int64_t a = 0; a < r; ++a)
        for (int64_t b = 0; b < c; ++b) {
          const float x = v[j * rc + a * c + b];
          if ((a >= na || b >= nb) && x != 0.0f)
            fail("values[" + str(j) + ", " + str(a) + ", " + str(b) + "] = " +
                 str(x) + " (block row " + str(i) + ", block column " + str(col) +
                 ") lies outside the " + str(rows) + " x " + str(cols) +
                 " matrix and must be 0");
        }
    }
  }
  block_row_ptr = Buffer<int64_t>(brp, static_cast<size_t>(block_rows + 1));
  block_col = Buffer<int32_t>(bc, static_cast<size_t>(nblocks));
  values = Buffer<float>(v, static_cast<size_t>(values_len));
}

void BsrWeight::to_canonical(std::vector<int64_t>& brp, std::vector<int32_t>& bc,
                             std::vector<float>& v) const {
  brp.assign(block_row_ptr.data(), block_row_ptr.data() + block_row_ptr.size());
  bc.assign(block_col.data(), block_col.data() + block_col.size());
  v.assign(values.data(), values.data() + values.size());
}

int64_t BsrWeight::full_end(int64_t i) const {
  const int64_t j1 = block_row_ptr[i + 1];
  return (edge_c != c && j1 > block_row_ptr[i] && block_col[j1 - 1] == block_cols - 1) ? j1 - 1
                                                                                       : j1;
}

}  // namespace sparseprune
