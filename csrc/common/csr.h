// Views of packed sparse weights as the kernels see them. Views never own memory.
//
// Units: every size and index is in elements, never bytes.
#pragma once
#include <cstdint>

namespace sparseprune {

// W [rows, cols] in CSR, rows = output features, cols = input features.
// Column indices are sorted and unique within a row (checked before a kernel sees them);
// kernels rely only on 0 <= col < cols and row_ptr being non-decreasing with row_ptr[0] == 0.
struct CsrMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  const int64_t* row_ptr = nullptr;  // [rows + 1]
  const void* col_idx = nullptr;     // [nnz]: uint16_t when index_bits == 16, int32_t when 32
  int index_bits = 32;
  const float* values = nullptr;     // [nnz]
};

// y[o] = bias[o] + sum_j W[o, j] x[j] for o in [r0, r1). x: [cols], y: [rows].
// bias may be null. One batch row; the small-batch path.
using SpmvFn = void (*)(const CsrMatrix& w, const float* x, const float* bias, float* y,
                        int64_t r0, int64_t r1);

// The panel path for a batch of up to MR rows of activations packed transposed:
// panel[k * MR + r] = x[r, k] (zero for r >= nvalid), 32-byte aligned (MR is a multiple of 8).
// Writes y[r * ldy + o] = bias[o] + sum_j W[o, j] x[r, j] for r < nvalid, o in [r0, r1).
using SpmmFn = void (*)(const CsrMatrix& w, const float* panel, int64_t nvalid, const float* bias,
                        float* y, int64_t ldy, int64_t r0, int64_t r1);

}  // namespace sparseprune
