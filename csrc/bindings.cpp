// pybind11 binding: the private module spice._core. Validation of user input happens in
// python/spice/selection.py; this layer only checks what it must to stay memory safe.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <csignal>
#include <cstring>
#include <memory>
#include <string>

#include "bindings_common.hpp"
#include "spice/core.hpp"

namespace spice::detail {
int auto_threads();  // engine.cpp
}

namespace py = pybind11;
using spice_py::to_array;
using spice_py::view_of;

namespace {

const char* stop_name(spice::StopReason s) {
  switch (s) {
    case spice::StopReason::Budget: return "budget";
    case spice::StopReason::EarlyStop: return "early_stop";
    case spice::StopReason::Exhausted: return "exhausted";
    case spice::StopReason::Cancelled: return "cancelled";
    case spice::StopReason::Filled: return "filled";
  }
  return "unknown";
}

const char* method_name(spice::Method m) {
  switch (m) {
    case spice::Method::Naive: return "naive";
    case spice::Method::Lazy: return "lazy";
    case spice::Method::Stochastic: return "stochastic";
  }
  return "unknown";
}

spice::Method method_of(const std::string& s) {
  for (auto m : {spice::Method::Naive, spice::Method::Lazy, spice::Method::Stochastic})
    if (s == method_name(m)) return m;
  throw py::value_error("unknown method '" + s + "' (naive, lazy or stochastic)");
}

const char* objective_name(spice::Objective o) {
  switch (o) {
    case spice::Objective::LogDet: return "logdet";
    case spice::Objective::DiagCompat: return "diag-compat";
    case spice::Objective::TopKCompat: return "topk-compat";
  }
  return "unknown";
}

spice::Objective objective_of(const std::string& s) {
  for (auto o :
       {spice::Objective::LogDet, spice::Objective::DiagCompat, spice::Objective::TopKCompat})
    if (s == objective_name(o)) return o;
  throw py::value_error("unknown objective '" + s + "' (logdet, diag-compat or topk-compat)");
}

spice::Options make_options(int64_t k, double alpha, double conflict_penalty, double early_stop,
                            const std::string& method, const std::string& objective, uint64_t seed,
                            double stochastic_eps, int threads, int64_t batch, int64_t chunk,
                            const std::string& spill_dir, double budget, bool unit_rows) {
  spice::Options o;
  o.k = k;
  o.alpha = alpha;
  o.lambda = conflict_penalty;
  o.omega = early_stop;
  o.method = method_of(method);
  o.objective = objective_of(objective);
  o.seed = seed;
  o.stochastic_eps = stochastic_eps;
  o.threads = threads;
  o.batch = batch;
  o.chunk = chunk;
  o.spill_dir = spill_dir;
  o.budget = budget;
  o.unit_rows = unit_rows;
  return o;
}

// A read-only contiguous 1-D array of n elements of T (the constraint arrays), or null for None.
template <class T>
const T* input_of(const py::object& a, int64_t n, const char* what) {
  if (a.is_none()) return nullptr;
  if (!py::isinstance<py::array_t<T, 0>>(a))
    throw py::value_error(std::string(what) + " has the wrong dtype");
  auto b = py::reinterpret_borrow<py::array_t<T, 0>>(a);
  if (b.ndim() != 1 || b.shape(0) != n || !(b.flags() & py::array::c_style))
    throw py::value_error(std::string(what) + " must be a contiguous 1-D array of its length");
  return b.data();
}

// An optional per-row float64 output of the run (None: not wanted), checked before any work.
double* out_buffer(const py::object& obj, int64_t n, const char* name) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<py::array_t<double, 0>>(obj))
    throw py::value_error(std::string(name) + " must be a float64 numpy array");
  auto b = py::reinterpret_borrow<py::array_t<double, 0>>(obj);
  if (b.ndim() != 1 || b.shape(0) != n || !(b.flags() & py::array::c_style) || !b.writeable())
    throw py::value_error(std::string(name) +
                          " must be a writable contiguous float64 array of length n");
  return b.mutable_data();
}

py::dict py_select(const py::array& G, int dtype_code, spice::Options opt,
                   const py::object& progress, double interval_s, const py::object& base_out,
                   const py::object& norm2_out, const py::object& cost, const py::object& groups,
                   const py::object& quotas) {
  spice::MatrixView view = view_of(G, dtype_code);
  // The constraint arrays (float64 cost, int32 groups, int64 quotas) stay referenced by the
  // caller's objects for the whole call.
  opt.cost = input_of<double>(cost, view.n, "cost (float64)");
  opt.group = input_of<int32_t>(groups, view.n, "groups (int32)");
  opt.n_groups = 0;
  opt.quota = nullptr;
  if (opt.group || !quotas.is_none()) {
    if (!opt.group || quotas.is_none()) throw py::value_error("groups and quotas go together");
    auto qa = py::reinterpret_borrow<py::array>(quotas);
    opt.n_groups = static_cast<int64_t>(qa.ndim() == 1 ? qa.shape(0) : 0);
    opt.quota = input_of<int64_t>(quotas, opt.n_groups, "quotas (int64)");
  }
  opt.base_out = out_buffer(base_out, view.n, "base_out");
  opt.norm2_out = out_buffer(norm2_out, view.n, "norm2_out");

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
  out["spent"] = res.spent;
  out["safeguard"] = res.safeguard;
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
  // The run's settings, by keyword (defaults as in spice/core.hpp); validated by select. The
  // keywords are the public names: conflict_penalty is the core's lambda, early_stop its omega
  // (0: off).
  py::class_<spice::Options>(m, "Options")
      .def(py::init(&make_options), py::kw_only(), py::arg("k") = 0, py::arg("alpha") = 1.0,
           py::arg("conflict_penalty") = 0.0, py::arg("early_stop") = 0.0,
           py::arg("method") = "lazy", py::arg("objective") = "logdet", py::arg("seed") = 0,
           py::arg("stochastic_eps") = 0.01, py::arg("threads") = 0, py::arg("batch") = 0,
           py::arg("chunk") = 0, py::arg("spill_dir") = std::string(), py::arg("budget") = 0.0,
           py::arg("unit_rows") = false)
      .def_readwrite("k", &spice::Options::k)
      .def_readwrite("alpha", &spice::Options::alpha)
      .def_readwrite("conflict_penalty", &spice::Options::lambda)
      .def_readwrite("early_stop", &spice::Options::omega)
      .def_property(
          "method", [](const spice::Options& o) { return std::string(method_name(o.method)); },
          [](spice::Options& o, const std::string& s) { o.method = method_of(s); })
      .def_property(
          "objective",
          [](const spice::Options& o) { return std::string(objective_name(o.objective)); },
          [](spice::Options& o, const std::string& s) { o.objective = objective_of(s); })
      .def_readwrite("seed", &spice::Options::seed)
      .def_readwrite("stochastic_eps", &spice::Options::stochastic_eps)
      .def_readwrite("threads", &spice::Options::threads)
      .def_readwrite("batch", &spice::Options::batch)
      .def_readwrite("chunk", &spice::Options::chunk)
      .def_readwrite("spill_dir", &spice::Options::spill_dir)
      .def_readwrite("budget", &spice::Options::budget)
      .def_readwrite("unit_rows", &spice::Options::unit_rows)
      .def("__repr__", [](const spice::Options& o) {
        return "Options(k=" + std::to_string(o.k) + ", alpha=" + std::to_string(o.alpha) +
               ", conflict_penalty=" + std::to_string(o.lambda) +
               ", early_stop=" + std::to_string(o.omega) +
               ", method='" + method_name(o.method) + "', objective='" +
               objective_name(o.objective) + "', seed=" + std::to_string(o.seed) + ")";
      });
  m.def("select", &py_select, py::arg("G"), py::arg("dtype_code"), py::arg("options"),
        py::kw_only(), py::arg("progress") = py::none(), py::arg("interval_s") = 0.25,
        py::arg("base_out") = py::none(), py::arg("norm2_out") = py::none(),
        py::arg("cost") = py::none(),
        py::arg("groups") = py::none(), py::arg("quotas") = py::none());
  m.def("row_norms2", &py_row_norms2, py::arg("G"), py::arg("dtype_code"), py::arg("threads") = 0);
  m.def("kernel_isa", &spice::kernel_isa);
  m.def("auto_threads", &spice::detail::auto_threads,
        "The thread count threads = 0 (the default) resolves to now: the usable CPUs less those "
        "other processes keep busy, at least 1 (OMP_NUM_THREADS when set).");
  spice_py::bind_stepper(m);  // bindings_stepper.cpp: a shard of the distributed greedy
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
