// The one signature every direct sparse convolution kernel has (csrc/spconv/*.cpp).
#pragma once
#include <cstdint>

#include "conv_geometry.h"

namespace sparseprune {

// Writes y[o * ldy + p] = bias[o] + sum_j W[o, j] * xq[g.offsets[j] + p] for pixels p in
// [pb, pe) and the output channels o of units [u0, u1) (CSR: a unit is a channel; BSR r x 1:
// r channels); bias may be null. pb is a multiple of the row's tile width and pe either one too
// or g.pixels (threads split the pixels in whole tiles). xq is one image's prepared input (or
// the input itself when g.direct). Nothing past pe is read past a tap's run or written: the
// last tile is masked. Inputs were validated when the weight and geometry were built.
template <class W>
using ConvFn = void (*)(const W& w, const ConvGeometry& g, const float* xq, const float* bias,
                        float* y, int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe);

}  // namespace sparseprune
