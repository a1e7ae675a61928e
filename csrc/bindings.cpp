// pybind11 binding: the private module spice._core. Validation of user input happens in
// python/spice/selection.py; this layer only checks what it must to stay memory safe.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <string>

#include "spice/core.hpp"

namespace py = pybind11;

namespace {

spice::MatrixView view_of(const py::array& G, int dtype_code) {
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
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

const char* stop_name(spice::StopReason s) {
  switch (s) {
    case spice::StopReason::Budget: return "budget";
    case spice::StopReason::EarlyStop: return "early_stop";
    case spice::StopReason::Exhausted: return "exhausted";
    case spice::StopReason::Cancelled: return "cancelled";
  }
  return "unknown";
}

py::dict py_select(const py::array& G, int dtype_code, int64_t k, double alpha, double lam,
                double omega, int method, int objective, uint64_t seed, double stochastic_eps,
                int threads, int64_t batch, const py::object& progress, double interval_s,
                   int64_t chunk, const py::object& base_out, const std::string& spill_dir) {
  spice::MatrixView view = view_of(G, dtype_code);
  spice::Options opt;
  opt.k = k;
  opt.alpha = alpha;
  opt.lambda = lam;
  opt.omega = omega;
  if (method < 0 || method > 2) throw py::value_error("unknown method code");
  if (objective < 0 || objective > 2) throw py::value_error("unknown objective code");
  opt.method = static_cast<spice::Method>(method);
  opt.objective = static_cast<spice::Objective>(objective);
  opt.seed = seed;
  opt.stochastic_eps = stochastic_eps;
  opt.threads = threads;
  opt.batch = batch;
  opt.chunk = chunk;
  opt.spill_dir = spill_dir;
  if (!base_out.is_none()) {
    if (!py::isinstance<py::array_t<double, 0>>(base_out))
      throw py::value_error("base_out must be a float64 numpy array");
    auto b = py::reinterpret_borrow<py::array_t<double, 0>>(base_out);
    if (b.ndim() != 1 || b.shape(0) != view.n || !(b.flags() & py::array::c_style) ||
        !b.writeable())
      throw py::value_error("base_out must be a writable contiguous float64 array of length n");
    opt.base_out = b.mutable_data();
  }

  // The hook runs on the calling thread between greedy steps: it takes the GIL, lets Python
  // handle Ctrl-C, and calls the user's progress callable.
  auto pending = std::make_shared<py::object>();  // an exception to re-raise, if any
  spice::ProgressHook hook = [&progress, pending](const spice::Progress& p) -> bool {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      *pending = py::reinterpret_borrow<py::object>(py::none());
      throw py::error_already_set();
    }
    if (!progress.is_none()) {
      py::object r = progress(p.picks, p.budget, p.evaluations, p.elapsed_s);
      if (!r.is_none() && !r.cast<bool>()) return false;
    }
    return true;
  };

  spice::Result res;
  {
    py::gil_scoped_release release;
    res = spice::select(view, opt, hook, interval_s);
  }
  py::dict out;
  out["indices"] = to_array(res.indices);
  out["gains"] = to_array(res.gains);
  out["base"] = to_array(res.base);
  out["align"] = to_array(res.align);
  out["conflict"] = to_array(res.conflict);
  out["scores"] = to_array(res.scores);
  out["objective_sum"] = res.objective_sum;
  out["opt_upper_bound"] = res.opt_upper_bound;
  out["stop_reason"] = stop_name(res.stop);
  out["evaluations"] = res.evaluations;
  out["bad_row"] = res.bad_row;
  out["dot_products"] = res.dot_products;
  return out;
}

py::array_t<double> py_row_norms2(const py::array& G, int dtype_code, int threads) {
  spice::MatrixView view = view_of(G, dtype_code);
  py::array_t<double> out(static_cast<py::ssize_t>(view.n));
  double* p = out.mutable_data();
  {
    py::gil_scoped_release release;
    spice::row_norms2(view, p, threads);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "spice compiled core: exact penalised log-det greedy selection";
  m.def("select", &py_select, py::arg("G"), py::arg("dtype_code"), py::arg("k"), py::arg("alpha"),
        py::arg("lam"), py::arg("omega"), py::arg("method"), py::arg("objective"),
        py::arg("seed"), py::arg("stochastic_eps"), py::arg("threads"), py::arg("batch"),
        py::arg("progress"), py::arg("interval_s"), py::arg("chunk") = 0,
        py::arg("base_out") = py::none(), py::arg("spill_dir") = std::string());
  m.def("row_norms2", &py_row_norms2, py::arg("G"), py::arg("dtype_code"), py::arg("threads") = 0);
  m.def("kernel_isa", &spice::kernel_isa);
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
