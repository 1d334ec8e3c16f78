// sparseprune._C's convolution entry points: ConvPlan (a CSR filter met with one input size:
// the geometry and the kernel row) and conv2d (checks the arrays against the plan, then runs
// the driver without the GIL).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "../dispatch.h"
#include "../py_util.h"
#include "conv_driver.h"

namespace sparseprune {
namespace {

// A weight the conv kernels run and its chosen row.
template <class W>
struct Bound {
  const W* w = nullptr;
  ConvKernel<W> kernel;
};

struct ConvPlan {
  py::object weight_ref;  // keeps the native weight (and so the bound pointer) alive
  std::variant<Bound<CsrWeight>, Bound<BsrWeight>> bound;
  ConvGeometry g;
  int64_t rows = 0;
  std::string kernel_name;
  int px = 0;
};

constexpr const char* kSpecFields =
    "(channels, height, width, kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_top, "
    "pad_left, pad_bottom, pad_right)";

ConvSpec spec_from(const py::tuple& t) {
  require(t.size() == 14, std::string("spec must be a 14-tuple of ints ") + kSpecFields);
  int64_t v[14];
  for (size_t i = 0; i < 14; ++i) {
    require(py::isinstance<py::int_>(t[i]), std::string("spec entries must be ints ") + kSpecFields);
    const py::int_ x = py::reinterpret_borrow<py::int_>(t[i]);
    require(x >= py::int_(0) && x <= py::int_(int64_t{1} << 31),
            "spec entries must be in [0, 2**31], got " + std::string(py::str(t[i])));
    v[i] = x.cast<int64_t>();
  }
  // Kernel size, stride, dilation and groups (entries 3..9) divide or size loops: 0 is refused
  // here, before anything computes with them.
  for (size_t i = 3; i <= 9; ++i)
    require(v[i] >= 1, "kernel size, stride, dilation and groups must be >= 1 (spec entry " +
                           std::to_string(i) + " is 0) " + kSpecFields);
  ConvSpec s;
  s.channels = v[0], s.height = v[1], s.width = v[2], s.kh = v[3], s.kw = v[4];
  s.stride_h = v[5], s.stride_w = v[6], s.dil_h = v[7], s.dil_w = v[8], s.groups = v[9];
  s.pad_top = v[10], s.pad_left = v[11], s.pad_bottom = v[12], s.pad_right = v[13];
  return s;
}

template <class W>
ConvPlan plan_for(const py::object& weight, const ConvSpec& spec, const py::object& kernel,
                  int r) {
  const W& w = weight.cast<const W&>();
  ConvKernel<W> k;
  if (kernel.is_none()) {
    // The tile width depends only on the output size (out_h * wq): pick it, then build the
    // geometry for that width.
    const int64_t oh = conv_out_size(spec.height, spec.pad_top, spec.pad_bottom, spec.kh,
                                     spec.stride_h, spec.dil_h);
    const int64_t ow = conv_out_size(spec.width, spec.pad_left, spec.pad_right, spec.kw,
                                     spec.stride_w, spec.dil_w);
    const int64_t wq = ow + spec.dil_w * (spec.kw - 1) / std::max<int64_t>(1, spec.stride_w);
    k = pick_conv_kernel(default_conv_kernels<W>(r),
                         std::max<int64_t>(1, oh) * std::max<int64_t>(1, wq));
  } else {
    k = conv_kernel_from_name<W>(kernel.cast<std::string>(), r);
  }
  ConvPlan p;
  p.weight_ref = weight;
  {
    py::gil_scoped_release release;
    p.g = make_conv_geometry(w, spec, k.px);
  }
  p.bound = Bound<W>{&w, k};
  p.rows = w.rows;
  p.kernel_name = k.name;
  p.px = k.px;
  return p;
}

ConvPlan make_conv_plan(const py::object& weight, const py::tuple& spec_t,
                        const py::object& kernel) {
  const ConvSpec spec = spec_from(spec_t);
  try {
    if (py::isinstance<CsrWeight>(weight)) return plan_for<CsrWeight>(weight, spec, kernel, 1);
    if (py::isinstance<BsrWeight>(weight)) {
      const BsrWeight& w = weight.cast<const BsrWeight&>();
      return plan_for<BsrWeight>(weight, spec, kernel, static_cast<int>(w.r));
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  throw py::value_error("weight must be a CsrWeight or a BsrWeight (r x 1 blocks)");
}

void check_nchw(const py::array& a, int64_t n, int64_t c, int64_t h, int64_t w, const char* what) {
  require(a.ndim() == 4 && is_dtype<float>(a), std::string(what) + " must be a 4-D float32 array");
  require((a.flags() & py::array::c_style) != 0, std::string(what) + " must be C-contiguous");
  const int64_t want[4] = {n, c, h, w};
  for (int i = 0; i < 4; ++i)
    require(a.shape(i) == want[i] || (i == 0 && n < 0),
            std::string(what) + " must have shape [" + (n < 0 ? "N" : std::to_string(n)) + ", " +
                std::to_string(c) + ", " + std::to_string(h) + ", " + std::to_string(w) +
                "], got dim " + std::to_string(i) + " = " + std::to_string(a.shape(i)));
}

// y = conv2d(x, W) + bias. Returns true when x held NaN or Inf.
bool conv2d(const ConvPlan& p, const py::array& x, const py::object& bias, py::array& y,
            int nthreads) {
  const ConvSpec& s = p.g.spec;
  check_nchw(x, -1, s.channels, s.height, s.width, "x");
  const int64_t batch = x.shape(0);
  check_nchw(y, batch, p.rows, p.g.out_h, p.g.out_w, "y");
  require(y.writeable(), "y must be writeable");
  const float* bias_ptr = nullptr;
  py::array bias_arr;
  if (!bias.is_none()) {
    bias_arr = bias.cast<py::array>();
    require(bias_arr.ndim() == 1 && is_dtype<float>(bias_arr) && bias_arr.shape(0) == p.rows &&
                (bias_arr.flags() & py::array::c_style) != 0,
            "bias must be a contiguous 1-D float32 array of length " + std::to_string(p.rows));
    bias_ptr = static_cast<const float*>(bias_arr.data());
  }
  require(nthreads >= 1 && nthreads <= kMaxThreads,
          "nthreads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
              std::to_string(nthreads));
  const float* xp = static_cast<const float*>(x.data());
  float* yp = static_cast<float*>(y.mutable_data());
  py::gil_scoped_release release;
  std::visit(
      [&](const auto& b) { run_conv(*b.w, p.g, b.kernel.fn, xp, batch, bias_ptr, yp, nthreads); },
      p.bound);
  return any_nonfinite(xp, 1, batch * s.channels * s.height * s.width, 0);
}

}  // namespace

void bind_conv(py::module_& m) {
  static const std::string doc =
      std::string("A CSR or BSR (r x 1) conv filter [O, C/groups*kh*kw] met with one input size: "
                  "ConvPlan(weight, spec, kernel=None), spec = ") + kSpecFields;
  py::class_<ConvPlan>(m, "ConvPlan", doc.c_str())
      .def(py::init(&make_conv_plan), py::arg("weight"), py::arg("spec"),
           py::arg("kernel") = py::none())
      .def_property_readonly("out_h", [](const ConvPlan& p) { return p.g.out_h; })
      .def_property_readonly("out_w", [](const ConvPlan& p) { return p.g.out_w; })
      .def_property_readonly("kernel", [](const ConvPlan& p) { return p.kernel_name; })
      .def_property_readonly("px", [](const ConvPlan& p) { return p.px; })
      .def_property_readonly("rows", [](const ConvPlan& p) { return p.rows; })
      .def_property_readonly("channel_blocks", [](const ConvPlan& p) { return p.g.nb; })
      .def_property_readonly("direct", [](const ConvPlan& p) { return p.g.direct; })
      .def_property_readonly("weight", [](const ConvPlan& p) { return p.weight_ref; });
  m.def("conv2d", &conv2d, py::arg("plan"), py::arg("x"), py::arg("bias"), py::arg("y"),
        py::arg("nthreads"));
}

}  // namespace sparseprune
