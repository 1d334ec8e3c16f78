// Every compiled linear kernel variant, from the family tables (spmm/spmm_kernels.inc,
// spmv/spmv_kernels.inc). A row's function pointer is typed by its weight format: the format of
// a row is the weight type its kernel takes, so a row cannot be paired with the wrong weight.
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "common/linear_fn.h"
#include "conv/conv_fn.h"
#include "formats/weights.h"

namespace sparseprune {

// One alternative per (signature, native weight type) pair (formats/weights.h).
template <class Tuple>
struct AnyKernelFnOver;
template <class... Ws>
struct AnyKernelFnOver<std::tuple<Ws...>> {
  using type = std::variant<LinearFn<Ws>..., ConvFn<Ws>...>;
};
using AnyKernelFn = AnyKernelFnOver<WeightTypes>::type;

struct KernelInfo {
  const char* name;  // the function's name, e.g. "spmm_csr_f32_16x1_avx2"
  Family family;
  Format format;
  uint32_t isa;  // one Isa bit
  int mr;        // spmm: batch rows per panel; spmv: 1; spconv: output pixels per tile
  int nr;        // output rows per step
  AnyKernelFn fn;
};

// Declarations of every table row: void fn(const W&, ...) with the LinearFn<W> signature.
#define SP_KERNEL(isa, fn, W, mr, nr)                                                      \
  void fn(const W& w, const float* in, int64_t nvalid, int64_t ldx, const float* bias,    \
          float* y, int64_t ldy, int64_t u0, int64_t u1);
#include "spmm/spmm_kernels.inc"
#include "spmv/spmv_kernels.inc"
#undef SP_KERNEL
#define SP_CONV(isa, fn, W, px, nr)                                                            \
  void fn(const W& w, const ConvGeometry& g, const float* xq, const float* bias, float* y,  \
          int64_t ldy, int64_t u0, int64_t u1, int64_t pb, int64_t pe);
#include "spconv/spconv_kernels.inc"
#undef SP_CONV

// Every row of every table, in table order (most preferred first within a family and format).
const std::vector<KernelInfo>& all_kernels();

// The row with this name, or nullptr.
const KernelInfo* find_kernel(const std::string& name);

const char* family_name(Family f);
const char* format_name(Format f);

// True when the CPU can run the variant (ignores the SPARSEPRUNE_ISA cap).
bool cpu_supports(const KernelInfo& k);

// True when the variant is allowed under the SPARSEPRUNE_ISA cap.
bool isa_allowed(const KernelInfo& k);

}  // namespace sparseprune
