// The Python module sparseprune._C: the only place that knows about Python. Native weight
// objects are validated once, in their constructors, and own their data (Python cannot edit
// it in place), so kernels never see unchecked data. Every call checks the activations' dtype,
// shapes and strides before a kernel runs, then releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "common/cpu.h"
#include "common/thread_pool.h"
#include "dispatch.h"
#include "formats/weights.h"
#include "kernels.h"
#include "linear/driver.h"

#ifndef SPARSEPRUNE_VERSION
#error "SPARSEPRUNE_VERSION must come from the build (pyproject's [project].version)"
#endif

namespace py = pybind11;
using namespace sparseprune;

namespace {

// Threads one call may ask for; more is a mistake (and would start that many threads).
constexpr int kMaxThreads = 1024;

template <typename T>
bool is_dtype(const py::array& a) {
  // Equivalence, not identity: an unpickled array carries its own (equal) dtype object.
  return py::isinstance<py::array_t<T, 0>>(a);
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

// A 1-D C-contiguous array of T (checked before anything is read or copied).
template <typename T>
const T* vec(const py::array& a, const char* what, const char* type) {
  require(a.ndim() == 1 && is_dtype<T>(a), std::string(what) + " must be a 1-D " + type + " array");
  require((a.flags() & py::array::c_style) != 0, std::string(what) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

template <typename T>
py::array_t<T> to_numpy(const T* p, size_t n) {
  py::array_t<T> out(static_cast<py::ssize_t>(n));
  if (n) std::memcpy(out.mutable_data(), p, n * sizeof(T));
  return out;
}

// ---- per-format construction from and export to canonical arrays (one entry per format) ----

CsrWeight make_csr(int64_t rows, int64_t cols, const py::array& row_ptr,
                   const py::array& col_idx, const py::array& values) {
  const int64_t* rp = vec<int64_t>(row_ptr, "row_ptr", "int64");
  const bool u16 = col_idx.ndim() == 1 && is_dtype<uint16_t>(col_idx);
  const void* ci = u16 ? static_cast<const void*>(vec<uint16_t>(col_idx, "col_idx", "uint16"))
                       : static_cast<const void*>(vec<int32_t>(col_idx, "col_idx", "uint16 or int32"));
  const float* v = vec<float>(values, "values", "float32");
  const int64_t n_rp = row_ptr.shape(0), n_ci = col_idx.shape(0), n_v = values.shape(0);
  py::gil_scoped_release release;
  try {
    return CsrWeight(rows, cols, rp, n_rp, ci, u16 ? 16 : 32, n_ci, v, n_v);
  } catch (const std::invalid_argument& e) {
    py::gil_scoped_acquire acquire;
    throw py::value_error(std::string("invalid CSR data: ") + e.what());
  }
}

py::dict csr_arrays(int64_t cols, const std::vector<int64_t>& rp, const std::vector<int32_t>& ci,
                    const std::vector<float>& v) {
  py::dict d;
  d["row_ptr"] = to_numpy(rp.data(), rp.size());
  if (cols <= 65536) {
    std::vector<uint16_t> c16(ci.begin(), ci.end());
    d["col_idx"] = to_numpy(c16.data(), c16.size());
  } else {
    d["col_idx"] = to_numpy(ci.data(), ci.size());
  }
  d["values"] = to_numpy(v.data(), v.size());
  return d;
}

py::dict arrays_of(const CsrWeight& w) {
  py::dict d;
  d["row_ptr"] = to_numpy(w.row_ptr.data(), w.row_ptr.size());
  if (w.index_bits == 16) {
    d["col_idx"] = to_numpy(w.col16.data(), w.col16.size());
  } else {
    d["col_idx"] = to_numpy(w.col32.data(), w.col32.size());
  }
  d["values"] = to_numpy(w.values.data(), w.values.size());
  return d;
}

py::dict arrays_of(const SellWeight& w) {
  std::vector<int64_t> rp;
  std::vector<int32_t> ci;
  std::vector<float> v;
  w.to_csr(rp, ci, v);
  return csr_arrays(w.cols, rp, ci, v);
}

py::tuple params_of(const CsrWeight&) { return py::tuple(); }
py::tuple params_of(const SellWeight&) { return py::tuple(); }

// ---- kernel plans ----

using AnyPlan = std::variant<LinearPlan<CsrWeight>, LinearPlan<SellWeight>>;

struct KernelPlan {
  Format format;
  std::vector<std::string> names;
  AnyPlan plan;
};

KernelPlan make_plan(int32_t format, const std::vector<std::string>& names) {
  try {
    switch (static_cast<Format>(format)) {
      case Format::kCsr: return {Format::kCsr, names, plan_from_names<CsrWeight>(names)};
      case Format::kSell: return {Format::kSell, names, plan_from_names<SellWeight>(names)};
      default: break;
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  throw py::value_error("no kernels for format id " + std::to_string(format));
}

// True when any of the n floats is NaN or +-Inf (exponent bits all ones). Branch-free so the
// compiler vectorizes it: ~0.1 ns per element, noise next to the matmul reading x anyway.
bool any_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld) {
  uint32_t hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = x + r * ld;
    for (int64_t i = 0; i < cols; ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + i, sizeof bits);
      hits |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
    }
  }
  return hits != 0;
}

// Row stride in elements of a 2-D float32 array whose rows are contiguous.
int64_t row_stride(const py::array& a, const char* what) {
  require(a.ndim() == 2 && is_dtype<float>(a), std::string(what) + " must be a 2-D float32 array");
  if (a.shape(0) == 0) return a.shape(1);  // empty: numpy may report zero strides
  require(a.shape(1) <= 1 || a.strides(1) == static_cast<py::ssize_t>(sizeof(float)),
          std::string(what) + " rows must be contiguous");
  const py::ssize_t s0 = a.strides(0);
  require(a.shape(0) <= 1 || (s0 % 4 == 0 && s0 / 4 >= a.shape(1)),
          std::string(what) + " must have non-overlapping rows with a positive stride");
  return a.shape(0) <= 1 ? a.shape(1) : s0 / 4;
}

// y[B, N] = x[B, K] W^T + bias. Returns true when x held NaN or Inf.
template <class W>
bool linear(const W& w, const py::array& x, const py::object& bias, py::array& y, int nthreads,
            const py::object& plan_obj) {
  const int64_t ldx = row_stride(x, "x");
  const int64_t ldy = row_stride(y, "y");
  require(y.writeable(), "y must be writeable");
  const int64_t batch = x.shape(0);
  require(x.shape(1) == w.cols, "x has " + std::to_string(x.shape(1)) +
                                    " features but the weight has " + std::to_string(w.cols));
  require(y.shape(0) == batch && y.shape(1) == w.rows,
          "y must have shape [" + std::to_string(batch) + ", " + std::to_string(w.rows) + "]");
  const float* bias_ptr = nullptr;
  py::array bias_arr;
  if (!bias.is_none()) {
    bias_arr = bias.cast<py::array>();
    require(bias_arr.ndim() == 1 && is_dtype<float>(bias_arr) && bias_arr.shape(0) == w.rows,
            "bias must be a 1-D float32 array of length " + std::to_string(w.rows));
    require((bias_arr.flags() & py::array::c_style) != 0, "bias must be C-contiguous");
    bias_ptr = static_cast<const float*>(bias_arr.data());
  }
  require(nthreads >= 1 && nthreads <= kMaxThreads,
          "nthreads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
              std::to_string(nthreads));
  const LinearPlan<W>* plan = &default_plan<W>();
  if (!plan_obj.is_none()) {
    const KernelPlan& kp = plan_obj.cast<const KernelPlan&>();
    plan = std::get_if<LinearPlan<W>>(&kp.plan);
    require(plan != nullptr, std::string("the kernel plan runs ") + format_name(kp.format) +
                                 " weights, not " + format_name(W::kFormat));
  }
  float* y_ptr = static_cast<float*>(y.mutable_data());
  const float* x_ptr = static_cast<const float*>(x.data());
  py::gil_scoped_release release;
  run_linear(w, *plan, x_ptr, batch, ldx, bias_ptr, y_ptr, ldy, nthreads);
  return any_nonfinite(x_ptr, batch, w.cols, ldx);
}

template <class W, class Make>
void bind_weight(py::module_& m, const char* name, const char* doc, Make make) {
  py::class_<W>(m, name, doc)
      .def(py::init(make))
      .def_readonly("rows", &W::rows)
      .def_readonly("cols", &W::cols)
      .def_readonly("nnz", &W::nnz)
      .def_property_readonly("nbytes", &W::nbytes)
      .def_property_readonly("format_id", [](const W&) { return static_cast<int>(W::kFormat); })
      .def_property_readonly("params", [](const W& w) { return params_of(w); })
      .def("arrays", [](const W& w) { return arrays_of(w); },
           "Copies of the canonical arrays (what a state_dict stores).")
      .def(py::pickle(
          [](const W& w) { return py::make_tuple(w.rows, w.cols, params_of(w), arrays_of(w)); },
          [make](const py::tuple& t) {
            require(t.size() == 4, std::string("bad pickled ") + "weight state");
            return make(t[0].cast<int64_t>(), t[1].cast<int64_t>(), t[2].cast<py::tuple>(),
                        t[3].cast<py::dict>());
          }));
  m.def("linear", &linear<W>, py::arg("weight"), py::arg("x"), py::arg("bias"), py::arg("y"),
        py::arg("nthreads"), py::arg("plan") = py::none());
}

py::list list_kernels() {
  py::list out;
  for (const KernelInfo& k : all_kernels()) {
    bool is_default = false;
    if (const auto* f = std::get_if<LinearFn<CsrWeight>>(&k.fn)) {
      const auto& p = default_plan<CsrWeight>();
      is_default = *f == p.spmv;
      for (const auto& q : p.panels) is_default |= *f == q.fn;
    } else if (const auto* g = std::get_if<LinearFn<SellWeight>>(&k.fn)) {
      const auto& p = default_plan<SellWeight>();
      is_default = *g == p.spmv;
      for (const auto& q : p.panels) is_default |= *g == q.fn;
    }
    py::dict row;
    row["name"] = k.name;
    row["family"] = family_name(k.family);
    row["format"] = format_name(k.format);
    row["format_id"] = static_cast<int>(k.format);
    row["isa"] = isa_name(k.isa);
    row["mr"] = k.mr;
    row["nr"] = k.nr;
    row["supported"] = cpu_supports(k);
    row["default"] = is_default;
    out.append(row);
  }
  return out;
}

py::dict cpu_info() {
  py::dict d;
  py::list detected, active;
  for (uint32_t bit : {kIsaScalar, kIsaAvx2, kIsaAvx512}) {
    if (cpu_isa_mask() & bit) detected.append(isa_name(bit));
    if (active_isa_mask() & bit) active.append(isa_name(bit));
  }
  d["detected"] = detected;
  d["active"] = active;
  d["threading"] = threading_backend();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseprune native kernels (private: use sparseprune.ops)";
  m.attr("__version__") = SPARSEPRUNE_VERSION;
  m.attr("MIN_PANEL_ROWS") = kMinPanelRows;
  m.def("list_kernels", &list_kernels, "Every compiled kernel variant with its ISA and panel size.");
  m.def("cpu_info", &cpu_info, "ISAs detected on this CPU and allowed by SPARSEPRUNE_ISA.");
  m.def("dispatch_log", &dispatch_log, "What the default plans chose, one line per format.");

  py::class_<KernelPlan>(m, "KernelPlan", "A fixed choice of kernels for one weight format")
      .def(py::init(&make_plan), py::arg("format_id"), py::arg("names"))
      .def_readonly("names", &KernelPlan::names)
      .def_property_readonly("format_id", [](const KernelPlan& p) { return static_cast<int>(p.format); })
      .def(py::pickle([](const KernelPlan& p) { return py::make_tuple(static_cast<int>(p.format), p.names); },
                      [](const py::tuple& t) {
                        return make_plan(t[0].cast<int32_t>(), t[1].cast<std::vector<std::string>>());
                      }));

  auto csr = [](int64_t rows, int64_t cols, const py::tuple&, const py::dict& a) {
    return make_csr(rows, cols, a["row_ptr"], a["col_idx"], a["values"]);
  };
  bind_weight<CsrWeight>(m, "CsrWeight",
                         "W [rows, cols] in CSR, validated and owned: CsrWeight(rows, cols, (), "
                         "{'row_ptr': int64, 'col_idx': uint16|int32, 'values': float32})",
                         csr);
  auto sell = [](int64_t rows, int64_t cols, const py::tuple&, const py::dict& a) {
    const CsrWeight w = make_csr(rows, cols, a["row_ptr"], a["col_idx"], a["values"]);
    py::gil_scoped_release release;
    return SellWeight(w);
  };
  bind_weight<SellWeight>(m, "SellWeight",
                          "W [rows, cols] in K-blocked SELL-C (built from validated CSR arrays, "
                          "the same arguments as CsrWeight); arrays() gives CSR back",
                          sell);
}
