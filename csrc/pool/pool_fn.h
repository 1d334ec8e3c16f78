// The max-pooling kernel family: 2-D max pooling over NCHW float32 planes.
//
// Not a sparse kernel, but the op that follows a ResNet's stem: torch's NCHW max_pool2d runs
// a per-output loop that costs more than a 90 %-sparse ResNet-18's stage-1 convolutions, so a
// converted model would spend its time there. Each kernel computes whole output rows as a
// vertical max of the window's input rows (contiguous, vectorized over the width) into a
// padded scratch row, then a horizontal max over it (vectorized for stride 1 and 2).
//
// Semantics are torch's: windows are clipped to the input (padding never wins), NaN
// propagates (a window holding a NaN gives NaN), ceil_mode only changes the output size.
// Units: elements, never bytes.
#pragma once
#include <cstdint>

namespace sparseprune {

struct PoolGeometry {
  int64_t height = 0, width = 0;      // input plane
  int64_t out_h = 0, out_w = 0;       // output plane
  int64_t kh = 1, kw = 1;             // window
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;       // top / left (bottom / right follow from out_h / out_w)
  int64_t dil_h = 1, dil_w = 1;
  // Scratch row length: pad_w + width + the right extent the last window reaches.
  int64_t scratch() const;
};

// Writes planes [p0, p1) of y ([planes, out_h, out_w]) from x ([planes, height, width]).
// `row` is scratch of g.scratch() floats owned by the calling thread.
using PoolFn = void (*)(const PoolGeometry& g, const float* x, float* y, float* row, int64_t p0,
                        int64_t p1);

struct PoolKernelInfo {
  const char* name;  // e.g. "maxpool2d_f32_avx2"
  uint32_t isa;      // one Isa bit
  PoolFn fn;
};

// Declarations of every row of pool/pool_kernels.inc.
#define SP_POOL(isa, fn) \
  void fn(const PoolGeometry& g, const float* x, float* y, float* row, int64_t p0, int64_t p1);
#include "pool_kernels.inc"
#undef SP_POOL

// Every row, most preferred first.
const PoolKernelInfo* pool_kernels(int* count);

}  // namespace sparseprune
