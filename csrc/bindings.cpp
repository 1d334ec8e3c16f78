// The Python module sparseprune._C: the only place that knows about Python. Every entry point
// checks dtypes, contiguity and sizes before a kernel runs, then releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>

#include "common/cpu.h"
#include "common/sell.h"
#include "common/thread_pool.h"
#include "common/validate.h"
#include "kernels.h"
#include "linear.h"

#ifndef SPARSEPRUNE_VERSION
#error "SPARSEPRUNE_VERSION must come from the build (pyproject's [project].version)"
#endif

namespace py = pybind11;
using namespace sparseprune;

namespace {

template <typename T>
bool is_dtype(const py::array& a) {
  return a.dtype().is(py::dtype::of<T>());
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

void require_contiguous(const py::array& a, const char* what) {
  require((a.flags() & py::array::c_style) != 0, std::string(what) + " must be C-contiguous");
}

// Builds a CsrMatrix view after the O(1) checks (dtypes, lengths, row_ptr ends).
CsrMatrix csr_view(const py::array& row_ptr, const py::array& col_idx, const py::array& values,
                   int64_t cols) {
  require(row_ptr.ndim() == 1 && is_dtype<int64_t>(row_ptr), "row_ptr must be a 1-D int64 array");
  require(col_idx.ndim() == 1 && (is_dtype<uint16_t>(col_idx) || is_dtype<int32_t>(col_idx)),
          "col_idx must be a 1-D uint16 or int32 array");
  require(values.ndim() == 1 && is_dtype<float>(values), "values must be a 1-D float32 array");
  require_contiguous(row_ptr, "row_ptr");
  require_contiguous(col_idx, "col_idx");
  require_contiguous(values, "values");
  require(row_ptr.shape(0) >= 1, "row_ptr must have rows + 1 >= 1 entries");
  require(cols >= 0, "cols must be >= 0, got " + std::to_string(cols));
  CsrMatrix w;
  w.rows = row_ptr.shape(0) - 1;
  w.cols = cols;
  w.row_ptr = static_cast<const int64_t*>(row_ptr.data());
  w.col_idx = col_idx.data();
  w.index_bits = is_dtype<uint16_t>(col_idx) ? 16 : 32;
  w.values = static_cast<const float*>(values.data());
  require(w.index_bits == 32 || cols <= 65536,
          "uint16 col_idx needs cols <= 65536, got cols = " + std::to_string(cols));
  require(col_idx.shape(0) == values.shape(0),
          "col_idx has " + std::to_string(col_idx.shape(0)) + " entries but values has " +
              std::to_string(values.shape(0)));
  require(w.row_ptr[0] == 0 && w.row_ptr[w.rows] == values.shape(0),
          "row_ptr must start at 0 and end at nnz = " + std::to_string(values.shape(0)) +
              ", got [" + std::to_string(w.row_ptr[0]) + ", ..., " +
              std::to_string(w.row_ptr[w.rows]) + "]");
  return w;
}

std::string validate(const py::array& row_ptr, const py::array& col_idx, const py::array& values,
                     int64_t cols) {
  // Same type checks as csr_view, but report end-pointer problems as messages, not exceptions.
  require(row_ptr.ndim() == 1 && is_dtype<int64_t>(row_ptr), "row_ptr must be a 1-D int64 array");
  require(row_ptr.shape(0) >= 1, "row_ptr must have rows + 1 >= 1 entries");
  require(col_idx.ndim() == 1 && (is_dtype<uint16_t>(col_idx) || is_dtype<int32_t>(col_idx)),
          "col_idx must be a 1-D uint16 or int32 array");
  require(values.ndim() == 1 && is_dtype<float>(values), "values must be a 1-D float32 array");
  require_contiguous(row_ptr, "row_ptr");
  require_contiguous(col_idx, "col_idx");
  if (col_idx.shape(0) != values.shape(0))
    return "col_idx has " + std::to_string(col_idx.shape(0)) + " entries but values has " +
           std::to_string(values.shape(0));
  if (is_dtype<uint16_t>(col_idx) && cols > 65536)
    return "uint16 col_idx needs cols <= 65536, got cols = " + std::to_string(cols);
  CsrMatrix w;
  w.rows = row_ptr.shape(0) - 1;
  w.cols = cols;
  w.row_ptr = static_cast<const int64_t*>(row_ptr.data());
  w.col_idx = col_idx.data();
  w.index_bits = is_dtype<uint16_t>(col_idx) ? 16 : 32;
  w.values = static_cast<const float*>(values.data());
  py::gil_scoped_release release;
  return validate_csr(w, values.shape(0));
}

// True when any of the n floats is NaN or +-Inf (exponent bits all ones). Branch-free so the
// compiler vectorizes it: ~0.1 ns per element, noise next to the matmul reading x anyway.
bool any_nonfinite(const float* x, int64_t n) {
  uint32_t hits = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    hits |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return hits != 0;
}

std::shared_ptr<SellPack> prepack_sell_py(const py::array& row_ptr, const py::array& col_idx,
                                          const py::array& values, int64_t cols) {
  const CsrMatrix w = csr_view(row_ptr, col_idx, values, cols);
  py::gil_scoped_release release;
  return std::make_shared<SellPack>(prepack_sell(w));
}

bool csr_linear_py(const py::array& row_ptr, const py::array& col_idx, const py::array& values,
                   int64_t cols, const py::array& x, const py::object& bias, py::array& y,
                   int nthreads, const std::string& kernel, const py::object& sell_obj) {
  const CsrMatrix w = csr_view(row_ptr, col_idx, values, cols);
  const SellPack* sell = nullptr;
  if (!sell_obj.is_none()) {
    sell = sell_obj.cast<const SellPack*>();
    require(sell->rows == w.rows && sell->cols == w.cols && sell->nnz == values.shape(0) &&
                sell->source_values == w.values && sell->source_row_ptr == w.row_ptr,
            "sell pack was built for a different weight");
  }
  require(x.ndim() == 2 && is_dtype<float>(x), "x must be a 2-D float32 array");
  require(y.ndim() == 2 && is_dtype<float>(y), "y must be a 2-D float32 array");
  require_contiguous(x, "x");
  require_contiguous(y, "y");
  require(y.writeable(), "y must be writeable");
  const int64_t batch = x.shape(0);
  require(x.shape(1) == cols, "x has " + std::to_string(x.shape(1)) +
                                  " features but the weight has " + std::to_string(cols));
  require(y.shape(0) == batch && y.shape(1) == w.rows,
          "y must have shape [" + std::to_string(batch) + ", " + std::to_string(w.rows) + "]");
  const float* bias_ptr = nullptr;
  py::array bias_arr;
  if (!bias.is_none()) {
    bias_arr = bias.cast<py::array>();
    require(bias_arr.ndim() == 1 && is_dtype<float>(bias_arr) && bias_arr.shape(0) == w.rows,
            "bias must be a 1-D float32 array of length " + std::to_string(w.rows));
    require_contiguous(bias_arr, "bias");
    bias_ptr = static_cast<const float*>(bias_arr.data());
  }
  require(nthreads >= 1, "nthreads must be >= 1, got " + std::to_string(nthreads));
  LinearKernels chosen = default_linear_kernels();
  if (!kernel.empty()) {
    const KernelInfo* info = find_kernel(kernel);
    require(info != nullptr, "unknown kernel '" + kernel + "' (see list_kernels())");
    require(cpu_supports(*info), "kernel '" + kernel + "' needs " + isa_name(info->isa) +
                                     ", which this CPU does not support");
    chosen = single_kernel(*info);
    require(chosen.sell == nullptr || sell != nullptr,
            "kernel '" + kernel + "' needs the weight's SellPack (prepack_sell)");
  }
  float* y_ptr = static_cast<float*>(y.mutable_data());
  const float* x_ptr = static_cast<const float*>(x.data());
  py::gil_scoped_release release;
  csr_linear(w, sell, x_ptr, batch, cols, bias_ptr, y_ptr, w.rows, nthreads, chosen);
  return any_nonfinite(x_ptr, batch * cols);
}

py::list list_kernels() {
  const LinearKernels& d = default_linear_kernels();
  py::list out;
  for (const KernelInfo& k : all_kernels()) {
    const bool is_default = k.fn == reinterpret_cast<void*>(d.spmv) ||
                            k.fn == reinterpret_cast<void*>(d.spmm_big) ||
                            k.fn == reinterpret_cast<void*>(d.spmm_small) ||
                            k.fn == reinterpret_cast<void*>(d.sell) ||
                            k.fn == reinterpret_cast<void*>(d.sell_small);
    py::dict row;
    row["name"] = k.name;
    row["family"] = k.family;
    row["format"] = k.format;
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
  m.def("validate_csr", &validate, py::arg("row_ptr"), py::arg("col_idx"), py::arg("values"),
        py::arg("cols"), "Full CSR check; returns '' when valid, else what is wrong.");
  py::class_<SellPack, std::shared_ptr<SellPack>>(m, "SellPack",
                                                  "K-blocked SELL-C copy of a CSR weight")
      .def_property_readonly("nbytes", &SellPack::nbytes)
      .def_property_readonly("padded_nnz", [](const SellPack& s) {
        return static_cast<int64_t>(s.values.size());
      });
  m.def("prepack_sell", &prepack_sell_py, py::arg("row_ptr"), py::arg("col_idx"),
        py::arg("values"), py::arg("cols"),
        "Builds the SellPack the batch >= 4 kernels use (from already validated CSR).");
  m.def("csr_linear", &csr_linear_py, py::arg("row_ptr"), py::arg("col_idx"), py::arg("values"),
        py::arg("cols"), py::arg("x"), py::arg("bias"), py::arg("y"), py::arg("nthreads"),
        py::arg("kernel") = "", py::arg("sell") = py::none(),
        "y[B, N] = x[B, K] W^T + bias with W [N, K] in CSR; writes y in place, GIL released. "
        "Returns True when x held NaN or Inf (the caller may then match dense semantics).");
}
