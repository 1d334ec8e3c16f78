// The Python module sparseprune._C: the only place that knows about Python. Native weight
// objects are validated once, in their constructors, and own their data (Python cannot edit
// it in place), so kernels never see unchecked data. Every call checks the activations' dtype,
// shapes and strides before a kernel runs, then releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <type_traits>
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
#include "py_util.h"

#ifndef SPARSEPRUNE_VERSION
#error "SPARSEPRUNE_VERSION must come from the build (pyproject's [project].version)"
#endif

namespace py = pybind11;
using namespace sparseprune;

namespace {


// A 1-D C-contiguous numpy array of T, borrowed (checked before anything is read or copied).
// Only real ndarrays are taken: converting another object would make a temporary whose data
// dies before the constructor reads it.
template <typename T>
struct Vec {
  const T* data;
  int64_t len;
};

template <typename T>
Vec<T> vec(py::handle h, const char* what, const char* type) {
  require(py::isinstance<py::array>(h), std::string(what) + " must be a numpy array");
  const py::array a = py::reinterpret_borrow<py::array>(h);
  require(a.ndim() == 1 && is_dtype<T>(a), std::string(what) + " must be a 1-D " + type + " array");
  require((a.flags() & py::array::c_style) != 0, std::string(what) + " must be C-contiguous");
  return {static_cast<const T*>(a.data()), static_cast<int64_t>(a.shape(0))};
}

template <typename T>
py::array_t<T> to_numpy(const T* p, size_t n) {
  py::array_t<T> out(static_cast<py::ssize_t>(n));
  if (n) std::memcpy(out.mutable_data(), p, n * sizeof(T));
  return out;
}

// ---- per-format construction from and export to canonical arrays (one entry per format) ----

// Two format parameters from a pickled / Python tuple, range-checked by the constructors.
std::pair<int64_t, int64_t> two_params(const py::tuple& p, const char* what) {
  require(p.size() == 2, std::string(what) + " takes 2 parameters");
  return {p[0].cast<int64_t>(), p[1].cast<int64_t>()};
}

template <class Make>
auto rethrow_invalid(const char* what, Make make) {
  try {
    return make();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(std::string("invalid ") + what + " data: " + e.what());
  }
}


CsrWeight make_csr(int64_t rows, int64_t cols, const py::dict& a) {
  for (const char* k : {"row_ptr", "col_idx", "values"})
    require(a.contains(k), std::string("CSR weight needs '") + k + "'");
  const auto rp = vec<int64_t>(a["row_ptr"], "row_ptr", "int64");
  const py::handle ci_obj = a["col_idx"];
  const bool u16 = py::isinstance<py::array>(ci_obj) &&
                   is_dtype<uint16_t>(py::reinterpret_borrow<py::array>(ci_obj));
  const void* ci;
  int64_t n_ci;
  if (u16) {
    const auto c = vec<uint16_t>(ci_obj, "col_idx", "uint16");
    ci = c.data, n_ci = c.len;
  } else {
    const auto c = vec<int32_t>(ci_obj, "col_idx", "uint16 or int32");
    ci = c.data, n_ci = c.len;
  }
  const auto v = vec<float>(a["values"], "values", "float32");
  // One canonical form: what a state_dict stores and loads back (int32 only past 65536 columns).
  require(u16 == (cols <= 65536), std::string("col_idx must be ") +
                                      (cols <= 65536 ? "uint16" : "int32") + " for " +
                                      std::to_string(cols) + " columns");
  py::gil_scoped_release release;
  return rethrow_invalid("CSR", [&] {
    return CsrWeight(rows, cols, rp.data, rp.len, ci, u16 ? 16 : 32, n_ci, v.data, v.len);
  });
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

py::dict arrays_of(const NmWeight& w) {
  std::vector<float> v;
  std::vector<uint8_t> pos;
  w.to_canonical(v, pos);
  py::dict d;
  d["values"] = to_numpy(v.data(), v.size());
  d["pos"] = to_numpy(pos.data(), pos.size());
  return d;
}

py::dict arrays_of(const BsrWeight& w) {
  std::vector<int64_t> brp;
  std::vector<int32_t> bc;
  std::vector<float> v;
  w.to_canonical(brp, bc, v);
  py::dict d;
  d["block_row_ptr"] = to_numpy(brp.data(), brp.size());
  d["block_col"] = to_numpy(bc.data(), bc.size());
  d["values"] = to_numpy(v.data(), v.size());
  return d;
}

py::tuple params_of(const CsrWeight&) { return py::tuple(); }
py::tuple params_of(const SellWeight&) { return py::tuple(); }
py::tuple params_of(const NmWeight& w) { return py::make_tuple(w.n, w.m); }
py::tuple params_of(const BsrWeight& w) { return py::make_tuple(w.r, w.c); }

// Stored values, padding included (what the kernels multiply).
int64_t stored_of(const CsrWeight& w) { return w.nnz; }
int64_t stored_of(const SellWeight& w) { return w.nnz; }
int64_t stored_of(const NmWeight& w) { return w.rows * w.groups * w.n; }
int64_t stored_of(const BsrWeight& w) { return w.nblocks * w.r * w.c; }


// ---- kernel plans ----

using AnyPlan = VariantOver<LinearPlan, WeightTypes>::type;

struct KernelPlan {
  Format format;
  std::vector<std::string> names;
  AnyPlan plan;
};

KernelPlan make_plan(int32_t format, const std::vector<std::string>& names) {
  std::optional<KernelPlan> out;
  try {
    for_each_weight([&](auto* tag) {
      using W = std::remove_pointer_t<decltype(tag)>;
      if (static_cast<int32_t>(W::kFormat) == format)
        out = KernelPlan{W::kFormat, names, plan_from_names<W>(names)};
    });
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
  if (!out) throw py::value_error("no kernels for format id " + std::to_string(format));
  return *out;
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

// Every index a kernel computes fits int32 rows/columns; larger shapes are refused up front
// (before any loop over rows or tiles could run for hours on a forged shape).
constexpr int64_t kMaxDim = (int64_t{1} << 31) - 1;

template <class Make>
auto checked_make(Make make) {
  return [make](const py::object& rows_o, const py::object& cols_o, const py::object& params_o,
                const py::object& arrays_o) {
    require(py::isinstance<py::int_>(rows_o) && py::isinstance<py::int_>(cols_o),
            "rows and cols must be ints");
    require(py::isinstance<py::tuple>(params_o), "params must be a tuple of ints");
    require(py::isinstance<py::dict>(arrays_o), "arrays must be a dict of numpy arrays");
    const py::tuple params = params_o.cast<py::tuple>();
    for (const auto& p : params) {
      require(py::isinstance<py::int_>(p), "params must be ints");
      const py::int_ v = py::reinterpret_borrow<py::int_>(p);
      require(v >= py::int_(0) && v <= py::int_(1 << 20), "params must be small non-negative ints");
    }
    const py::int_ rows_i = rows_o.cast<py::int_>(), cols_i = cols_o.cast<py::int_>();
    require(rows_i >= py::int_(0) && rows_i <= py::int_(kMaxDim) && cols_i >= py::int_(0) &&
                cols_i <= py::int_(kMaxDim),
            "rows and cols must be in [0, 2**31)");
    return make(rows_o.cast<int64_t>(), cols_o.cast<int64_t>(), params, arrays_o.cast<py::dict>());
  };
}

template <class W, class Make>
void bind_weight(py::module_& m, const char* name, const char* doc, Make make_raw) {
  auto make = checked_make(make_raw);
  py::class_<W>(m, name, doc)
      .def(py::init(make))
      .def_readonly("rows", &W::rows)
      .def_readonly("cols", &W::cols)
      .def_property_readonly("nnz", [](const W& w) { return stored_of(w); })
      .def_property_readonly("nbytes", &W::nbytes)
      .def_property_readonly("format_id", [](const W&) { return static_cast<int>(W::kFormat); })
      .def_property_readonly("params", [](const W& w) { return params_of(w); })
      .def("arrays", [](const W& w) { return arrays_of(w); },
           "Copies of the canonical arrays (what a state_dict stores).")
      .def(py::pickle(
          [](const W& w) { return py::make_tuple(w.rows, w.cols, params_of(w), arrays_of(w)); },
          [make](const py::tuple& t) {
            require(t.size() == 4, std::string("bad pickled ") + "weight state");
            return make(t[0], t[1], t[2], t[3]);
          }));
  m.def("linear", &linear<W>, py::arg("weight"), py::arg("x"), py::arg("bias"), py::arg("y"),
        py::arg("nthreads"), py::arg("plan") = py::none());
}

py::list list_kernels() {
  py::list out;
  for (const KernelInfo& k : all_kernels()) {
    bool is_default = false;
    for_each_weight([&](auto* tag) {
      using W = std::remove_pointer_t<decltype(tag)>;
      if (const auto* f = std::get_if<LinearFn<W>>(&k.fn)) {
        const auto& p = default_plan<W>();
        is_default = *f == p.spmv;
        for (const auto& q : p.panels) is_default |= *f == q.fn;
      }
    });
    if (const auto* f = std::get_if<ConvFn<CsrWeight>>(&k.fn))
      for (const auto& q : default_conv_kernels<CsrWeight>(1)) is_default |= *f == q.fn;
    if (const auto* f = std::get_if<ConvFn<BsrWeight>>(&k.fn))
      for (const auto& q : default_conv_kernels<BsrWeight>(k.nr ? k.nr : 2)) is_default |= *f == q.fn;
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

  bind_conv(m);
  bind_pool(m);

  py::class_<KernelPlan>(m, "KernelPlan", "A fixed choice of kernels for one weight format")
      .def(py::init(&make_plan), py::arg("format_id"), py::arg("names"))
      .def_readonly("names", &KernelPlan::names)
      .def_property_readonly("format_id", [](const KernelPlan& p) { return static_cast<int>(p.format); })
      .def(py::pickle([](const KernelPlan& p) { return py::make_tuple(static_cast<int>(p.format), p.names); },
                      [](const py::tuple& t) {
                        return make_plan(t[0].cast<int32_t>(), t[1].cast<std::vector<std::string>>());
                      }));

  auto csr = [](int64_t rows, int64_t cols, const py::tuple&, const py::dict& a) {
    return make_csr(rows, cols, a);
  };
  bind_weight<CsrWeight>(m, "CsrWeight",
                         "W [rows, cols] in CSR, validated and owned: CsrWeight(rows, cols, (), "
                         "{'row_ptr': int64, 'col_idx': uint16|int32, 'values': float32})",
                         csr);
  auto sell = [](int64_t rows, int64_t cols, const py::tuple&, const py::dict& a) {
    const CsrWeight w = make_csr(rows, cols, a);
    py::gil_scoped_release release;
    return SellWeight(w);
  };
  bind_weight<SellWeight>(m, "SellWeight",
                          "W [rows, cols] in K-blocked SELL-C (built from validated CSR arrays, "
                          "the same arguments as CsrWeight); arrays() gives CSR back",
                          sell);
  auto nm = [](int64_t rows, int64_t cols, const py::tuple& p, const py::dict& a) {
    const auto [n, m] = two_params(p, "NmWeight");
    for (const char* k : {"values", "pos"})
      require(a.contains(k), std::string("N:M weight needs '") + k + "'");
    const auto v = vec<float>(a["values"], "values", "float32");
    const auto pos = vec<uint8_t>(a["pos"], "pos", "uint8");
    py::gil_scoped_release release;
    return rethrow_invalid(
        "N:M", [&] { return NmWeight(rows, cols, n, m, v.data, v.len, pos.data, pos.len); });
  };
  bind_weight<NmWeight>(m, "NmWeight",
                        "N:M along the inputs: NmWeight(rows, cols, (n, m), {'values': float32 "
                        "[rows * groups * n], 'pos': uint8 [same]})",
                        nm);
  auto bsr = [](int64_t rows, int64_t cols, const py::tuple& p, const py::dict& a) {
    const auto [r, c] = two_params(p, "BsrWeight");
    for (const char* k : {"block_row_ptr", "block_col", "values"})
      require(a.contains(k), std::string("BSR weight needs '") + k + "'");
    const auto brp = vec<int64_t>(a["block_row_ptr"], "block_row_ptr", "int64");
    const auto bc = vec<int32_t>(a["block_col"], "block_col", "int32");
    const auto v = vec<float>(a["values"], "values", "float32");
    py::gil_scoped_release release;
    return rethrow_invalid("BSR", [&] {
      return BsrWeight(rows, cols, r, c, brp.data, brp.len, bc.data, bc.len, v.data, v.len);
    });
  };
  bind_weight<BsrWeight>(m, "BsrWeight",
                         "r x c blocks: BsrWeight(rows, cols, (r, c), {'block_row_ptr': int64, "
                         "'block_col': int32, 'values': float32 [nblocks * r * c]})",
                         bsr);
}
