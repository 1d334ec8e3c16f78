// sparseprune._C's max-pooling entry points: max_pool2d (checks the arrays and the geometry,
// then runs the chosen row over the planes without the GIL) and list_pool_kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../common/cpu.h"
#include "../common/thread_pool.h"
#include "../py_util.h"
#include "pool_fn.h"

namespace sparseprune {

int64_t PoolGeometry::scratch() const {
  const int64_t reach = out_w > 0 ? (out_w - 1) * stride_w + (kw - 1) * dil_w + 1 : 0;
  return std::max(pad_w + width, reach);
}

const PoolKernelInfo* pool_kernels(int* count) {
  static const PoolKernelInfo table[] = {
#define SP_POOL(isa, fn) {#fn, isa, &fn},
#include "pool_kernels.inc"
#undef SP_POOL
  };
  *count = static_cast<int>(sizeof(table) / sizeof(table[0]));
  return table;
}

namespace {

const PoolKernelInfo* default_pool_kernel() {
  int n = 0;
  const PoolKernelInfo* rows = pool_kernels(&n);
  for (int i = 0; i < n; ++i)
    if (active_isa_mask() & rows[i].isa) return &rows[i];
  return &rows[n - 1];  // the scalar row is last and always allowed
}

const PoolKernelInfo& pool_kernel_by_name(const std::string& name) {
  int n = 0;
  const PoolKernelInfo* rows = pool_kernels(&n);
  for (int i = 0; i < n; ++i) {
    if (name != rows[i].name) continue;
    require((cpu_isa_mask() & rows[i].isa) != 0,
            "kernel " + name + " needs " + isa_name(rows[i].isa) + ", which this CPU lacks");
    return rows[i];
  }
  throw py::value_error("unknown pool kernel " + name);
}

constexpr const char* kSpecFields = "(kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)";

void check_planes(const py::array& a, const char* what) {
  require(a.ndim() == 3 && is_dtype<float>(a), std::string(what) + " must be a 3-D float32 array");
  require((a.flags() & py::array::c_style) != 0, std::string(what) + " must be C-contiguous");
}

// y[p] = max_pool2d(x[p]) for every plane p; x [P, H, W], y [P, OH, OW] (OH, OW as the caller
// computed them: any sizes are memory-safe, windows are clipped to the input).
void max_pool2d(const py::array& x, py::array& y, const py::tuple& spec, int nthreads,
                const py::object& kernel) {
  check_planes(x, "x");
  check_planes(y, "y");
  require(y.writeable(), "y must be writeable");
  require(x.shape(0) == y.shape(0), "x and y must hold the same number of planes");
  require(spec.size() == 8, std::string("spec must be an 8-tuple of ints ") + kSpecFields);
  int64_t v[8];
  for (size_t i = 0; i < 8; ++i) {
    require(py::isinstance<py::int_>(spec[i]), std::string("spec entries must be ints ") +
                                                   kSpecFields);
    const py::int_ e = py::reinterpret_borrow<py::int_>(spec[i]);
    require(e >= py::int_(0) && e <= py::int_(int64_t{1} << 31),
            "spec entries must be in [0, 2**31], got " + std::string(py::str(spec[i])));
    v[i] = e.cast<int64_t>();
  }
  for (int i : {0, 1, 2, 3, 6, 7})
    require(v[i] >= 1, std::string("kernel size, stride and dilation must be >= 1 ") +
                           kSpecFields);
  PoolGeometry g;
  g.height = x.shape(1), g.width = x.shape(2), g.out_h = y.shape(1), g.out_w = y.shape(2);
  g.kh = v[0], g.kw = v[1], g.stride_h = v[2], g.stride_w = v[3];
  g.pad_h = v[4], g.pad_w = v[5], g.dil_h = v[6], g.dil_w = v[7];
  require(g.height < (int64_t{1} << 31) && g.width < (int64_t{1} << 31) &&
              g.out_h < (int64_t{1} << 31) && g.out_w < (int64_t{1} << 31),
          "plane sizes must be below 2**31");
  require(nthreads >= 1 && nthreads <= kMaxThreads,
          "nthreads must be in [1, " + std::to_string(kMaxThreads) + "], got " +
              std::to_string(nthreads));
  const PoolKernelInfo& k =
      kernel.is_none() ? *default_pool_kernel() : pool_kernel_by_name(kernel.cast<std::string>());
  const int64_t planes = x.shape(0);
  if (planes == 0 || g.out_h == 0 || g.out_w == 0) return;
  const float* xp = static_cast<const float*>(x.data());
  float* yp = static_cast<float*>(y.mutable_data());
  py::gil_scoped_release release;
  const int nt = static_cast<int>(std::min<int64_t>(nthreads, planes));
  parallel_run(nt, [&](int tid) {
    std::vector<float> row(static_cast<size_t>(g.scratch()) + 1);
    const int64_t p0 = planes * tid / nt, p1 = planes * (tid + 1) / nt;
    k.fn(g, xp, yp, row.data(), p0, p1);
  });
}

py::list list_pool_kernels() {
  py::list out;
  const PoolKernelInfo* chosen = default_pool_kernel();
  int n = 0;
  const PoolKernelInfo* rows = pool_kernels(&n);
  for (int i = 0; i < n; ++i) {
    py::dict row;
    row["name"] = rows[i].name;
    row["family"] = "pool";
    row["isa"] = isa_name(rows[i].isa);
    row["supported"] = (cpu_isa_mask() & rows[i].isa) != 0;
    row["default"] = &rows[i] == chosen;
    out.append(row);
  }
  return out;
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def("max_pool2d", &max_pool2d, py::arg("x"), py::arg("y"), py::arg("spec"),
        py::arg("nthreads"), py::arg("kernel") = py::none(),
        (std::string("y[p] = max_pool2d(x[p]) over planes: x [P, H, W], y [P, OH, OW] float32, "
                     "spec = ") + kSpecFields).c_str());
  m.def("list_pool_kernels", &list_pool_kernels, "Every compiled max-pooling variant.");
}

}  // namespace sparseprune
