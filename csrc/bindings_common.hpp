// What the binding units share (bindings.cpp, bindings_stepper.cpp): zero-copy views of numpy
// arrays and arrays of results. Only memory-safety checks live here; python/spice validates input.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <vector>

#include "spice/core.hpp"

namespace spice_py {

namespace py = pybind11;

inline spice::MatrixView view_of(const py::array& G, int dtype_code) {
  if (G.ndim() != 2) throw py::value_error("G must be 2-D");
  const auto dt = static_cast<spice::DType>(dtype_code);
  size_t es;
  switch (dt) {
    case spice::DType::F32: es = 4; break;
    case spice::DType::F64: es = 8; break;
    case spice::DType::F16:
    case spice::DType::BF16: es = 2; break;
    default: throw py::value_error("unknown dtype code");
  }
  if (static_cast<size_t>(G.itemsize()) != es)
    throw py::value_error("array item size does not match the dtype code");
  const auto n = static_cast<int64_t>(G.shape(0)), d = static_cast<int64_t>(G.shape(1));
  if (d > 1 && G.strides(1) != static_cast<py::ssize_t>(es))
    throw py::value_error("rows of G must be contiguous (G.strides[1] == itemsize)");
  if (n > 1 && (G.strides(0) <= 0 || G.strides(0) % static_cast<py::ssize_t>(es) != 0))
    throw py::value_error("row stride of G must be a positive multiple of the item size");
  spice::MatrixView v;
  v.data = G.data();
  v.n = n;
  v.d = d;
  v.row_stride = n > 1 ? static_cast<int64_t>(G.strides(0) / static_cast<py::ssize_t>(es)) : d;
  v.dtype = dt;
  return v;
}

template <class T>
inline py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

// Binds spice::Stepper as spice._core.Stepper (bindings_stepper.cpp).
void bind_stepper(py::module_& m);

}  // namespace spice_py
