#include "nm_weight.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sparseprune {
namespace {

std::string where(int64_t o, int64_t g, int64_t j) {
  return "row " + std::to_string(o) + ", group " + std::to_string(g) + ", slot " +
         std::to_string(j);
}

// The first rule the canonical arrays break ("" when valid); see nm_weight.h.
std::string nm_problem(int64_t rows, int64_t cols, int64_t n, int64_t m, int64_t groups,
                       const float* values, const uint8_t* pos) {
  for (int64_t o = 0; o < rows; ++o) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = (o * groups + g) * n;
      int prev = -1;
      for (int64_t j = 0; j < n; ++j) {
        const int p = pos[base + j];
        const float v = values[base + j];
        if (p >= m)
          return "pos = " + std::to_string(p) + " at " + where(o, g, j) + " is not < m = " +
                 std::to_string(m);
        if (p <= prev)
          return "positions at " + where(o, g, j) + " are not strictly increasing (" +
                 std::to_string(prev) + " then " + std::to_string(p) + ")";
        if (g * m + p >= cols && v != 0.0f)
          return "value " + std::to_string(v) + " at " + where(o, g, j) + " sits at column " +
                 std::to_string(g * m + p) + " >= cols = " + std::to_string(cols) +
                 " (only 0 may pad there)";
        prev = p;
      }
    }
  }
  return {};
}

}  // namespace

NmWeight::NmWeight(int64_t rows_, int64_t cols_, int64_t n_, int64_t m_, const float* values,
                   int64_t values_len, const uint8_t* pos, int64_t pos_len)
    : rows(rows_), cols(cols_), n(n_), m(m_) {
  auto fail = [](const std::string& msg) { throw std::invalid_argument(msg); };
  if (rows < 0 || cols < 0)
    fail("negative shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
  if (!(1 <= n && n < m && m <= 16))
    fail("N:M sparsity needs 1 <= n < m <= 16, got n = " + std::to_string(n) +
         ", m = " + std::to_string(m));
  groups = cols / m + (cols % m != 0);
  int64_t len = 0;
  // Overflow-checked: a wrapped product would let short arrays pass the length check.
  if (__builtin_mul_overflow(rows, groups, &len) || __builtin_mul_overflow(len, n, &len) ||
      len > (int64_t{1} << 40))
    fail("shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ") with " +
         std::to_string(n) + ":" + std::to_string(m) + " is too large");
  if (values_len != len || pos_len != len)
    fail("values has " + std::to_string(values_len) + " and pos " + std::to_string(pos_len) +
         " entries, expected rows * ceil(cols / m) * n = " + std::to_string(len));
  if (len > 0 && (!values || !pos)) fail("values or pos is null");
  const std::string problem = nm_problem(rows, cols, n, m, groups, values, pos);
  if (!problem.empty()) fail(problem);

  tiles = (rows + kNmTile - 1) / kNmTile;
  gpw = static_cast<int>(16 / m);
  win_cols = static_cast<int>(gpw * m);
  windows = (groups + gpw - 1) / gpw;
  epw = static_cast<int>(gpw * n);
  ppw = (epw + 1) / 2;
  // Buffer zero-fills: padding rows and groups are value 0, offset 0 with no further work.
  vals = Buffer<float>(static_cast<size_t>(tiles * windows * epw * kNmTile));
  nib = Buffer<uint8_t>(static_cast<size_t>(tiles * windows * ppw * kNmTile));
  const bool partial = cols % m != 0;
  if (partial) tail_pos = Buffer<uint8_t>(static_cast<size_t>(rows * n));

  for (int64_t o = 0; o < rows; ++o) {
    const int64_t t = o / kNmTile, r = o % kNmTile;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t wi = g / gpw, k = g % gpw;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t src = (o * groups + g) * n + j;
        const int64_t e = k * n + j;
        // Out-of-range padding points at the last column instead: kernels never check.
        const int64_t col = std::min(g * m + pos[src], cols - 1);
        const int off = static_cast<int>(col - wi * win_cols);
        vals[static_cast<size_t>(((t * windows + wi) * epw + e) * kNmTile + r)] = values[src];
        uint8_t& b = nib[static_cast<size_t>(((t * windows + wi) * ppw + e / 2) * kNmTile + r)];
        b = static_cast<uint8_t>(b | (e % 2 ? off << 4 : off));
      }
      if (partial && g == groups - 1)
        for (int64_t j = 0; j < n; ++j) tail_pos[o * n + j] = pos[(o * groups + g) * n + j];
    }
  }
}

void NmWeight::to_canonical(std::vector<float>& values, std::vector<uint8_t>& pos) const {
  values.assign(static_cast<size_t>(rows * groups * n), 0.f);
  pos.assign(values.size(), 0);
  const bool partial = cols % m != 0;
  for (int64_t o = 0; o < rows; ++o) {
    const int64_t t = o / kNmTile, r = o % kNmTile;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t wi = g / gpw, k = g % gpw;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t dst = (o * groups + g) * n + j;
        const int64_t e = k * n + j;
        values[dst] = vals[static_cast<size_t>(((t * windows + wi) * epw + e) * kNmTile + r)];
        const uint8_t b =
            nib[static_cast<size_t>(((t * windows + wi) * ppw + e / 2) * kNmTile + r)];
        const int off = e % 2 ? b >> 4 : b & 15;
        pos[dst] = partial && g == groups - 1 ? tail_pos[o * n + j]
                                              : static_cast<uint8_t>(off - k * m);
      }
    }
  }
}

}  // namespace sparseprune
