// Loop._set_io_backend / Loop.io_backend: the choice between the engine's
// epoll and io_uring backends (engine/src/io_backend.cpp).
#include <cstring>
#include <system_error>

#include "loop_object.hpp"

namespace shardloop::py {

// _set_io_backend(mode): 0 epoll, 1 io_uring (strict: OSError naming the
// cause when this process cannot have a ring), 2 io_uring where possible.
// Returns None, or (auto) the reason the loop stayed on epoll.
PyObject* loop_set_io_backend(LoopObject* self, PyObject* arg) {
  const long mode = PyLong_AsLong(arg);
  if (mode == -1 && PyErr_Occurred()) return nullptr;
  if (mode < 0 || mode > 2) {
    PyErr_SetString(PyExc_ValueError, "mode must be 0, 1 or 2");
    return nullptr;
  }
  try {
    const bool ok = self->engine->set_io_backend(mode == 0 ? IoBackend::kEpoll : IoBackend::kIoUring, mode == 1);
    if (ok) Py_RETURN_NONE;
    return PyUnicode_FromString(self->engine->io_fallback_reason().c_str());
  } catch (const std::system_error& e) {
    const int err = e.code().value();
    PyObject* exc = PyObject_CallFunction(PyExc_OSError, "is", err, (std::string("io_uring unavailable: ") + e.what()).c_str());
    if (exc) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
      Py_DECREF(exc);
    }
    return nullptr;
  } catch (...) {
    set_error_from_cpp();  // bad_alloc: MemoryError; nothing C++ leaves here
    return nullptr;
  }
}

PyObject* loop_get_io_backend(LoopObject* self, void*) {
  return PyUnicode_FromString(self->engine->io_backend() == IoBackend::kIoUring ? "io_uring" : "epoll");
}

}  // namespace shardloop::py

namespace shardloop::py {

// _io_stats(): the loop's IoStats as a dict of ints (tests, benchmarks).
PyObject* loop_io_stats(LoopObject* self, PyObject*) {
  const IoStats& s = self->engine->io_stats();
  const struct {
    const char* name;
    std::uint64_t value;
  } fields[] = {
      {"deliveries", s.deliveries}, {"delivered_bytes", s.delivered_bytes}, {"reads", s.reads},
      {"direct_sends", s.direct_sends}, {"flushes", s.flushes}, {"enters", s.enters},
      {"cqes", s.cqes}, {"recv_cqes", s.recv_cqes}, {"recv_enobufs", s.recv_enobufs},
      {"recv_rearms", s.recv_rearms}, {"send_sqes", s.send_sqes}, {"short_sends", s.short_sends},
      {"accept_cqes", s.accept_cqes}, {"connect_sqes", s.connect_sqes}, {"buffers", s.buffers},
  };
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  for (const auto& f : fields) {
    PyObject* v = PyLong_FromUnsignedLongLong(f.value);
    if (v == nullptr || PyDict_SetItemString(d, f.name, v) != 0) {
      Py_XDECREF(v);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(v);
  }
  return d;
}

}  // namespace shardloop::py
