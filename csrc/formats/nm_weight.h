// NmWeight: W [rows, cols] with N:M sparsity along the input dimension (rows = output features,
// cols = input features): every group of m consecutive columns of a row keeps at most n values.
//
// Canonical layout (what the constructor takes and to_canonical gives back, bit for bit):
//   groups = ceil(cols / m); values float32 [rows, groups * n] and pos uint8 [rows, groups * n],
//   row-major. Row o, group g, slot j (0 <= j < n) holds values[o, g * n + j] at column
//   g * m + pos[o, g * n + j].
//   Rules: 1 <= n < m <= 16; within a group the n positions are strictly increasing and < m;
//   a slot whose column g * m + pos is >= cols (only possible in a last, partial group) must
//   hold 0.0f (or -0.0f). A group with fewer than n kept values fills the rest with zero-valued
//   slots at unused positions: they are multiplied like any other slot.
//
// Internal layout (what the kernels read). Rows are cut into tiles of kNmTile = 16 rows (the
// unit): one vector lane = one output row. Columns are cut into windows of gpw = 16 / m whole
// groups (win_cols = gpw * m <= 16 columns: one zmm or two ymm of x), so a kernel loads x once
// per window and picks each row's input with a register permute. A window has epw = gpw * n
// entries; entry e is slot e % n of the window's group e / n. For tile t, window w, entry e,
// lane r (row 16 t + r):
//   vals[((t * windows + w) * epw + e) * 16 + r]            the value (float32, 64-B lines)
//   nib[((t * windows + w) * ppw + e / 2) * 16 + r]         its column offset within the window,
//       in the low nibble for even e and the high nibble for odd e (ppw = ceil(epw / 2)).
// So the batch-1 path streams 4.5 bytes per kept value, and one vpmovzxbd + one shift yields
// the permute indices of two entries (a permute reads only the low 4 / 3 bits of a lane).
// Padding (rows >= rows, groups >= groups) has value 0 and offset 0. A canonical slot at a
// column >= cols is stored at column cols - 1 (its value is 0), so no kernel ever addresses
// x or a panel past cols; its original position is kept in tail_pos for to_canonical.
//
// Units: elements, never bytes. A unit is one tile of 16 rows.
#pragma once
#include <cstdint>
#include <vector>

#include "../common/buffer.h"
#include "../common/linear_fn.h"

namespace sparseprune {

constexpr int kNmTile = 16;  // output rows per unit: the lanes of a zmm, two ymm

class NmWeight {
 public:
  static constexpr Format kFormat = Format::kNm;
  // Per-tile cost in multiply-adds charged for setup and stores when balancing threads.
  static constexpr int64_t kTileCost = 64;

  // Copies the canonical arrays into the internal layout after a full check; throws
  // std::invalid_argument naming the first problem (row, group, slot, value).
  NmWeight(int64_t rows, int64_t cols, int64_t n, int64_t m, const float* values,
           int64_t values_len, const uint8_t* pos, int64_t pos_len);

  int64_t rows = 0, cols = 0, n = 0, m = 0, groups = 0;
  // Derived shape of the internal layout (see above).
  int64_t tiles = 0, windows = 0;
  int gpw = 0, win_cols = 0, epw = 0, ppw = 0;
  Buffer<float> vals;        // [tiles][windows][epw][16]
  Buffer<uint8_t> nib;       // [tiles][windows][ppw][16]
  Buffer<uint8_t> tail_pos;  // [rows][n]: canonical pos of the last group when cols % m != 0

  // The canonical arrays this weight was built from (resized to rows * groups * n).
  void to_canonical(std::vector<float>& values, std::vector<uint8_t>& pos) const;

  int64_t units() const { return tiles; }
  static constexpr int64_t unit_rows() { return kNmTile; }
  // Prefix sum of unit costs: cost of units [0, u). Every tile has the same number of entries.
  int64_t unit_cost(int64_t u) const { return u * (windows * epw * kNmTile + kTileCost); }
  int64_t nbytes() const {
    return static_cast<int64_t>(vals.nbytes() + nib.nbytes() + tail_pos.nbytes());
  }
};

// Kernels (LinearFn<NmWeight>, csrc/spmv/spmv_nm_f32_*.cpp and csrc/spmm/spmm_nm_f32_*.cpp)
// write rows [16 u0, min(16 u1, rows)) of y. Zero-valued slots are multiplied like the others,
// so a NaN/Inf in x may reach rows with no weight on it (callers fix non-finite rows anyway).
// (declared from the kernel tables in kernels.h)

}  // namespace sparseprune
