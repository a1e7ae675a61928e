// pybind11 binding of spice::Stepper (spice/stepper.hpp): one shard of the distributed exact
// greedy, driven by python/spice/distributed.py. Not thread safe: one caller at a time (a Ray
// actor runs its calls one after another).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "bindings_common.hpp"
#include "spice/stepper.hpp"

namespace spice_py {
namespace {

struct PyStepper {
  py::array G;  // keeps the shard's rows alive (the engine reads them in place)
  int64_t d = 0;
  size_t item = 0;
  std::unique_ptr<spice::Stepper> s;
};

py::object candidate_tuple(const spice::Candidate& c) {
  if (c.index < 0) return py::none();
  return py::make_tuple(c.index, c.score, c.delta, c.base, c.align, c.conflict, c.q);
}

}  // namespace

void bind_stepper(py::module_& m) {
  py::class_<PyStepper>(m, "Stepper")
      .def(py::init([](const py::array& G, int dtype_code, const spice::Options& opt) {
             auto p = std::make_unique<PyStepper>();
             p->G = G;
             const spice::MatrixView v = view_of(p->G, dtype_code);
             p->d = v.d;
             p->item = v.elem_size();
             py::gil_scoped_release release;
             p->s = std::make_unique<spice::Stepper>(v, opt);
             return p;
           }),
           py::arg("G"), py::arg("dtype_code"), py::arg("options"))
      .def_property_readonly("bad_row", [](const PyStepper& p) { return p.s->bad_row(); })
      .def_property_readonly("picks", [](const PyStepper& p) { return p.s->picks(); })
      .def_property_readonly("evaluations", [](const PyStepper& p) { return p.s->evaluations(); })
      .def_property_readonly("dot_products", [](const PyStepper& p) { return p.s->dot_products(); })
      .def("best",
           [](PyStepper& p) {
             spice::Candidate c;
             {
               py::gil_scoped_release release;
               c = p.s->best();
             }
             return candidate_tuple(c);
           })
      .def(
          "best_of_sample",
          [](PyStepper& p, int64_t m, uint64_t seed) {
            spice::Candidate c;
            {
              py::gil_scoped_release release;
              c = p.s->best_of_sample(m, seed);
            }
            return candidate_tuple(c);
          },
          py::arg("m"), py::arg("seed"))
      .def("remaining", [](PyStepper& p) { return p.s->remaining(); })
      .def(
          "apply_pick",
          [](PyStepper& p, const py::array& row, double q, int64_t local) {
            if (static_cast<size_t>(row.itemsize()) != p.item || row.size() != p.d ||
                !(row.flags() & py::array::c_style))
              throw py::value_error("row must be a contiguous array of d items of G's dtype");
            const void* r = row.data();
            py::gil_scoped_release release;
            p.s->apply_pick(r, q, local);
          },
          py::arg("row"), py::arg("q"), py::arg("local") = -1)
      .def("top_gains",
           [](const PyStepper& p, int64_t m) {
             std::vector<double> v;
             {
               py::gil_scoped_release release;
               v = p.s->top_gains(m);
             }
             return to_array(v);
           })
      .def("base", [](const PyStepper& p, int64_t local) { return p.s->base(local); });
}

}  // namespace spice_py
