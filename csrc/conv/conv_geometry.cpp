#include "conv_geometry.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace sparseprune {
namespace {

// The L1 share one tile's input slice may take (Zen 3/4 and most x86 cores have 32-48 KiB).
constexpr int64_t kTileBytes = 24 << 10;
// Fewer taps than this per (row, channel block) and the loop overhead and exit mispredict of
// each block outweigh the L1 reuse it buys (measured on Zen 4: 1x1 convs prefer whole rows).
constexpr int64_t kMinTapsPerBlock = 32;

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

int64_t conv_out_size(int64_t in, int64_t pad0, int64_t pad1, int64_t k, int64_t stride,
                      int64_t dil) {
  const int64_t span = dil * (k - 1) + 1;
  const int64_t padded = in + pad0 + pad1;
  if (padded < span) return -1;
  return (padded - span) / stride + 1;
}

namespace {

// The format-independent part: `units` units of `unit_rows` output rows, unit u owning entries
// [unit_ptr[u], unit_ptr[u + 1]) whose filter columns (taps) col_of(j) are sorted.
template <class ColOf>
ConvGeometry build(const ConvSpec& s, int64_t rows, int64_t cols, int64_t units,
                   int64_t unit_rows, const int64_t* unit_ptr, ColOf col_of, int px) {
  auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
  const int64_t entries = unit_ptr[units];
  if (s.kh < 1 || s.kw < 1 || s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1 ||
      s.groups < 1)
    bad("kernel size, stride, dilation and groups must be >= 1");
  if (s.kh > 4096 || s.kw > 4096 || s.stride_h > 4096 || s.stride_w > 4096 || s.dil_h > 4096 ||
      s.dil_w > 4096)
    bad("kernel size, stride and dilation must be <= 4096");
  if (s.pad_top < 0 || s.pad_left < 0 || s.pad_bottom < 0 || s.pad_right < 0 ||
      s.pad_top > 4096 || s.pad_left > 4096 || s.pad_bottom > 4096 || s.pad_right > 4096)
    bad("padding must be in [0, 4096]");
  if (s.channels < 1 || s.height < 1 || s.width < 1 || s.height > (1 << 24) ||
      s.width > (1 << 24))
    bad("input channels, height and width must be >= 1 (got " + str(s.channels) + ", " +
        str(s.height) + ", " + str(s.width) + ")");
  if (s.channels % s.groups != 0 || rows % s.groups != 0)
    bad("in channels " + str(s.channels) + " and out channels " + str(rows) +
        " must be divisible by groups " + str(s.groups));
  if ((rows / s.groups) % unit_rows != 0)
    bad(str(unit_rows) + "-row blocks would straddle two groups: " + str(rows / s.groups) +
        " output channels per group");
  const int64_t cg = s.channels / s.groups;
  const int64_t taps = s.kh * s.kw;
  if (cols != cg * taps)
    bad("the filter has " + str(cols) + " columns per output channel, the input needs " +
        str(cg) + " x " + str(s.kh) + " x " + str(s.kw) + " = " + str(cg * taps));
  if (px < 1 || px > 1024) bad("px must be in [1, 1024]");

  ConvGeometry g;
  g.spec = s;
  g.px = px;
  g.out_h = conv_out_size(s.height, s.pad_top, s.pad_bottom, s.kh, s.stride_h, s.dil_h);
  g.out_w = conv_out_size(s.width, s.pad_left, s.pad_right, s.kw, s.stride_w, s.dil_w);
  if (g.out_h < 1 || g.out_w < 1)
    bad("the padded input (" + str(s.height + s.pad_top + s.pad_bottom) + " x " +
        str(s.width + s.pad_left + s.pad_right) + ") is smaller than the dilated kernel");
  const int64_t max_dy = s.dil_h * (s.kh - 1) / s.stride_h;
  const int64_t max_dx = s.dil_w * (s.kw - 1) / s.stride_w;
  // Direct only when the pixels are whole tiles: the last, partial tile of a prepared input
  // reads past its pixels into the buffer's slack (plain loads; masked ones are microcoded on
  // AMD cores), which x itself does not have. Copying a 1 x 1 layer's input costs ~1 % of it.
  g.direct = s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
             s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0 &&
             (s.height * s.width) % px == 0;
  std::vector<int32_t> phase_of(static_cast<size_t>(s.stride_h * s.stride_w), -1);
  if (g.direct) {
    g.hq = s.height, g.wq = s.width, g.nphase = 1;
    g.phase_a = {0}, g.phase_b = {0};
    phase_of[0] = 0;
  } else {
    g.hq = g.out_h + max_dy;
    g.wq = g.out_w + max_dx;
    for (int64_t kh = 0; kh < s.kh; ++kh)
      for (int64_t kw = 0; kw < s.kw; ++kw) {
        const int64_t a = s.dil_h * kh % s.stride_h, b = s.dil_w * kw % s.stride_w;
        int32_t& slot = phase_of[a * s.stride_w + b];
        if (slot < 0) {
          slot = static_cast<int32_t>(g.nphase++);
          g.phase_a.push_back(static_cast<int32_t>(a));
          g.phase_b.push_back(static_cast<int32_t>(b));
        }
      }
  }
  g.plane = g.hq * g.wq;
  g.pixels = g.out_h * g.wq;
  // Every offset and offset + pixel index must fit int32 (the kernels' index type).
  const int64_t planes_floats = s.channels * g.nphase * g.plane;
  g.xq_floats = g.direct ? 0 : planes_floats + max_dx + 64;
  if (planes_floats + max_dx + 64 >= (int64_t{1} << 31))
    bad("the prepared input would hold " + str(planes_floats) +
        " floats per image; at most 2**31 are supported");

  // Channel blocks (see the header): L1-sized slices, but not so small that a block holds
  // only a few taps of a row.
  const int64_t foot = g.nphase * (px + max_dy * g.wq + max_dx) * 4;  // bytes per channel
  const int64_t cb_l1 = std::max<int64_t>(1, kTileBytes / std::max<int64_t>(1, foot));
  // Multiply-adds per output channel (an r x 1 block is r of them, for r channels).
  const int64_t avg = units ? std::max<int64_t>(1, entries / units) : 1;
  const int64_t cb_min = (kMinTapsPerBlock * cg + avg - 1) / avg;
  const int64_t cb0 = std::min(cg, std::max(cb_l1, cb_min));
  g.nb = (cg + cb0 - 1) / cb0;
  g.cb = (cg + g.nb - 1) / g.nb;

  g.blk.assign(static_cast<size_t>(units * (g.nb + 1)), 0);
  g.offsets = Buffer<int32_t>(static_cast<size_t>(entries));
  const int64_t units_per_group = rows / s.groups / unit_rows;
  for (int64_t u = 0; u < units; ++u) {
    const int64_t c_base = (u / units_per_group) * cg;
    int64_t* bp = &g.blk[u * (g.nb + 1)];
    int64_t b = 0;
    bp[0] = unit_ptr[u];
    for (int64_t j = unit_ptr[u]; j < unit_ptr[u + 1]; ++j) {
      const int64_t col = col_of(j);
      const int64_t c = col / taps, t = col % taps;
      while (b < c / g.cb) bp[++b] = j;  // columns are sorted: blocks come in order
      const int64_t ty = s.dil_h * (t / s.kw), tx = s.dil_w * (t % s.kw);
      const int64_t ph = phase_of[(ty % s.stride_h) * s.stride_w + tx % s.stride_w];
      const int64_t off = ((c_base + c) * g.nphase + ph) * g.plane +
                          (ty / s.stride_h) * g.wq + tx / s.stride_w;
      g.offsets[j] = static_cast<int32_t>(off);
    }
    while (b < g.nb) bp[++b] = unit_ptr[u + 1];
  }
  return g;
}

}  // namespace

ConvGeometry make_conv_geometry(const CsrWeight& w, const ConvSpec& s, int px) {
  const void* cols = w.col_idx();
  if (w.index_bits == 16) {
    const uint16_t* c16 = static_cast<const uint16_t*>(cols);
    return build(s, w.rows, w.cols, w.rows, 1, w.row_ptr.data(),
                 [c16](int64_t j) { return static_cast<int64_t>(c16[j]); }, px);
  }
  const int32_t* c32 = static_cast<const int32_t*>(cols);
  return build(s, w.rows, w.cols, w.rows, 1, w.row_ptr.data(),
               [c32](int64_t j) { return static_cast<int64_t>(c32[j]); }, px);
}

ConvGeometry make_conv_geometry(const BsrWeight& w, const ConvSpec& s, int px) {
  if (w.c != 1)
    throw std::invalid_argument("convolution blocks must be r x 1 (r output channels of one "
                                "tap), got " + str(w.r) + " x " + str(w.c));
  const int32_t* bc = w.block_col.data();
  return build(s, w.rows, w.cols, w.block_rows, w.r, w.block_row_ptr.data(),
               [bc](int64_t j) { return static_cast<int64_t>(bc[j]); }, px);
}

void prepare_conv_input(const ConvGeometry& g, const float* x, float* xq, int64_t c0,
                        int64_t c1) {
  const ConvSpec& s = g.spec;
  for (int64_t c = c0; c < c1; ++c) {
    const float* src = x + c * s.height * s.width;
    for (int64_t ph = 0; ph < g.nphase; ++ph) {
      float* dst = xq + (c * g.nphase + ph) * g.plane;
      const int64_t a = g.phase_a[ph], b = g.phase_b[ph];
      // Columns j with source column sw * j + b - pad_left in [0, W): [j0, j1).
      const int64_t first = s.pad_left - b;  // sw * j >= first
      const int64_t j0 = std::min(g.wq, first <= 0 ? 0 : (first + s.stride_w - 1) / s.stride_w);
      const int64_t lim = s.width + s.pad_left - b;  // sw * j < lim
      const int64_t n_in = lim <= 0 ? 0 : (lim + s.stride_w - 1) / s.stride_w;
      const int64_t j1 = std::max(j0, std::min(g.wq, n_in));
      for (int64_t i = 0; i < g.hq; ++i) {
        float* row = dst + i * g.wq;
        const int64_t sr = s.stride_h * i + a - s.pad_top;
        if (sr < 0 || sr >= s.height) {
          std::memset(row, 0, sizeof(float) * g.wq);
          continue;
        }
        const float* in = src + sr * s.width;
        std::fill(row, row + j0, 0.f);
        if (s.stride_w == 1) {
          std::memcpy(row + j0, in + (j0 + b - s.pad_left), sizeof(float) * (j1 - j0));
        } else {
          for (int64_t j = j0; j < j1; ++j) row[j] = in[s.stride_w * j + b - s.pad_left];
        }
        std::fill(row + j1, row + g.wq, 0.f);
      }
    }
  }
  if (c1 == s.channels) {
    float* tail = xq + s.channels * g.nphase * g.plane;
    std::fill(tail, xq + g.xq_floats, 0.f);
  }
}

}  // namespace sparseprune
