// Small helpers shared by the binding files (bindings.cpp, conv/conv_bindings.cpp).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace sparseprune {
namespace py = pybind11;

// Threads one call may ask for; more is a mistake (and would start that many threads).
constexpr int kMaxThreads = 1024;

template <typename T>
inline bool is_dtype(const py::array& a) {
  // Equivalence, not identity: an unpickled array carries its own (equal) dtype object.
  return py::isinstance<py::array_t<T, 0>>(a);
}

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

// True when any of the n floats is NaN or +-Inf (exponent bits all ones). Branch-free so the
// compiler vectorizes it: ~0.1 ns per element, noise next to the matmul reading x anyway.
inline bool any_nonfinite(const float* x, int64_t rows, int64_t cols, int64_t ld) {
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

// Registers ConvPlan and conv2d (conv/conv_bindings.cpp).
void bind_conv(py::module_& m);

// Registers max_pool2d and list_pool_kernels (pool/pool_bindings.cpp).
void bind_pool(py::module_& m);

}  // namespace sparseprune
