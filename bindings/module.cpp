// shardloop._core: the native loop types are raw CPython types (their
// methods are on every callback's path); pybind11 carries the module and
// the cold functions. perf/micro.py measures the call cost that motivates this.
#include <pybind11/pybind11.h>

#include "handle.hpp"
#include "loop_object.hpp"
#include "sock_ops.hpp"
#include "stream_reader_feed.hpp"
#include "shardloop/acceptor.hpp"
#include "shardloop/version.hpp"

namespace py = pybind11;

namespace shardloop::py {
int init_runtime_type(PyObject* module);  // runtime_object.cpp
int init_tls_type(PyObject* module);      // tls_protocol.cpp
}

namespace shardloop::py_bindings {
void init_process(pybind11::module_& m);  // process.cpp
}

namespace {

PyObject* raw_noop(PyObject*, PyObject* const*, Py_ssize_t) { Py_RETURN_NONE; }

// _run_in_context(context, fn, *args): fn(*args) in a transport's context,
// or in the current one when that context is already entered (a protocol
// callback writing to its own transport), where Context.run would raise.
PyObject* run_in_context(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 2 || !PyContext_CheckExact(args[0])) {
    PyErr_SetString(PyExc_TypeError, "_run_in_context(context, fn, *args)");
    return nullptr;
  }
  shardloop::py::ContextScope scope(args[0]);
  return PyObject_Vectorcall(args[1], args + 2, nargs - 2, nullptr);
}

PyMethodDef raw_functions[] = {
    {"_run_in_context", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(run_in_context)),
     METH_FASTCALL, nullptr},
    {"_raw_noop", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(raw_noop)), METH_FASTCALL,
     "No-op through CPython's vectorcall, for call-cost measurements."},
    {"_set_asyncio_types", shardloop::py::set_asyncio_types, METH_VARARGS, nullptr},
    {"_set_socket_types", shardloop::py::set_socket_types, METH_VARARGS, nullptr},
    {"_set_stream_types", shardloop::py::set_stream_types, METH_VARARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "Native core of shardloop: an asyncio event loop on libuv.";
  if (shardloop::py::init_handle_types(m.ptr()) < 0 || shardloop::py::init_loop_type(m.ptr()) < 0 ||
      shardloop::py::init_stream_type(m.ptr()) < 0 || shardloop::py::init_tls_type(m.ptr()) < 0 ||
      shardloop::py::init_datagram_type(m.ptr()) < 0 || shardloop::py::init_runtime_type(m.ptr()) < 0 ||
      PyModule_AddFunctions(m.ptr(), raw_functions) < 0) {
    throw py::error_already_set();
  }
  m.attr("engine_version") = shardloop::kVersion;
  PyObject* upcalls = shardloop::py::upcall_names();
  if (upcalls == nullptr) throw py::error_already_set();
  m.attr("LOOP_UPCALLS") = py::reinterpret_steal<py::object>(upcalls);
  m.def("libuv_version", [] { return std::string(uv_version_string()); },
        "Version of the libuv the engine runs on.");
  m.def("_ring_accept_supported", [] { return shardloop::Acceptor::supported(); },
        "Whether io_uring loops accept on their ring here (multishot accept, probed once).");
  shardloop::py_bindings::init_process(m);
  m.def("_pybind_noop", [](py::object) {}, "No-op through pybind11, for call-cost measurements.");
}
