// Direct sparse convolution: how a packed filter meets one input geometry (design §3-4, conv).
//
// A Conv2d weight [O, C/groups, KH, KW] is packed as CSR over the flattened filter
// [O, C/groups * KH * KW] (column j = c * KH * KW + kh * KW + kw). For one input size the
// geometry turns every kept tap into an offset into a *prepared* input, so a kernel computes
//     y'[o, p] = bias[o] + sum_j W[o, j] * xq[offset[j] + p]      for p in [0, P)
// over contiguous pixels: one broadcast and one vector FMA per kept weight and pixel vector.
//
// The prepared input xq holds, per input channel and per used stride phase (a, b), the plane
//     X_ab[i, j] = x_padded[stride_h * i + a, stride_w * j + b],   i < hq, j < wq
// (zero outside x), so a tap at (dy, dx) = (dil_h * kh, dil_w * kw) reads plane
// (c, dy % stride_h, dx % stride_w) shifted by (dy / stride_h) rows and (dx / stride_w) columns:
// stride, padding and dilation all become offsets. Output pixel p = oh * wq + ow; columns
// ow >= OW are junk (dropped when copied out), which is what makes every tap one contiguous run.
// A 1x1 convolution with stride 1 and no padding whose H * W is a whole number of tiles reads
// x itself (direct): xq is x, wq = W.
//
// Units: elements (floats, taps), never bytes.
#pragma once
#include <cstdint>
#include <vector>

#include "../common/buffer.h"
#include "../formats/bsr_weight.h"
#include "../formats/csr_weight.h"

namespace sparseprune {

struct ConvSpec {
  int64_t channels = 0, height = 0, width = 0;  // input C, H, W
  int64_t kh = 1, kw = 1;
  int64_t stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, groups = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
};

// Output size of one spatial dimension, or -1 when the (padded) input is smaller than the
// dilated kernel.
int64_t conv_out_size(int64_t in, int64_t pad0, int64_t pad1, int64_t k, int64_t stride,
                      int64_t dil);

struct ConvGeometry {
  ConvSpec spec;
  int64_t out_h = 0, out_w = 0;
  int64_t hq = 0, wq = 0, plane = 0;  // prepared plane rows, columns, floats (hq * wq)
  int64_t nphase = 0;                 // used stride phases per channel
  std::vector<int32_t> phase_a, phase_b;  // row / column phase of each used phase
  int64_t pixels = 0;                 // P = out_h * wq
  bool direct = false;                // xq is the input itself
  int64_t xq_floats = 0;              // prepared floats per image (tail included); 0 if direct
  int px = 16;                        // pixels per kernel tile (the kernel row's)
  // Channel blocks: the entries (CSR nonzeros or BSR r x 1 blocks) of unit u (a row, or a
  // block row) on local channels [b * cb, (b + 1) * cb) are [blk[u * (nb + 1) + b],
  // blk[u * (nb + 1) + b + 1]), so one tile's slice of xq (cb channels x (px + halo) floats)
  // stays in L1 while every unit walks it.
  int64_t nb = 1, cb = 0;
  std::vector<int64_t> blk;  // [units * (nb + 1)]
  Buffer<int32_t> offsets;   // [entries]: into one image's xq (+ P stays inside it)
};

// Builds the geometry of w (a conv filter flattened to [O, C/groups * kh * kw]) for spec, for
// a kernel with px-pixel tiles. Throws std::invalid_argument naming the problem when the
// filter does not match spec (rows % groups, cols = C/groups * kh * kw), the output is empty
// or negative, or an offset would not fit int32. A BSR filter must have r x 1 blocks that
// never straddle two groups ((O / groups) % r == 0): each block is one tap of r channels.
ConvGeometry make_conv_geometry(const CsrWeight& w, const ConvSpec& spec, int px);
ConvGeometry make_conv_geometry(const BsrWeight& w, const ConvSpec& spec, int px);

// Fills the prepared planes of input channels [c0, c1) of one image (x: [C, H, W] contiguous;
// xq: g.xq_floats floats). The tail past the last plane is zeroed by the c1 == C call.
void prepare_conv_input(const ConvGeometry& g, const float* x, float* xq, int64_t c0, int64_t c1);

}  // namespace sparseprune
