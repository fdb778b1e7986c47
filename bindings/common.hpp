// Small CPython helpers shared by the extension's types.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstring>
#include <exception>
#include <new>

// Critical sections exist from 3.13 on; on a GIL build they are plain
// braces, so code written with them compiles the same on 3.11 and 3.12.
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

namespace shardloop::py {

// The exception currently raised, as one object (normalized), or nullptr.
inline PyObject* fetch_exception() {
#if PY_VERSION_HEX >= 0x030C0000
  return PyErr_GetRaisedException();
#else
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  if (type == nullptr) return nullptr;
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
#endif
}

// Raises `exc` again; steals the reference.
inline void restore_exception(PyObject* exc) {
#if PY_VERSION_HEX >= 0x030C0000
  PyErr_SetRaisedException(exc);
#else
  PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(exc))), exc,
                PyException_GetTraceback(exc));
#endif
}

// Inside a catch block: raises the C++ exception being handled as a Python
// one (MemoryError for bad_alloc), so nothing C++ crosses into CPython.
inline void set_error_from_cpp() noexcept {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
  }
}

// A new reference to `o`, or nullptr for None: how the optional callbacks
// the transports hand over are stored.
inline PyObject* new_ref_unless_none(PyObject* o) { return o == Py_None ? nullptr : Py_NewRef(o); }

// The OSError for a libuv code (a negated errno value), worded by the C
// library as Python's own socket calls word it; a new reference.
inline PyObject* uv_os_error(int code) {
  return PyObject_CallFunction(PyExc_OSError, "is", -code, std::strerror(-code));
}

// A transport's `context=` argument: a contextvars.Context or None.
inline bool check_context_arg(PyObject* context) {
  if (context == Py_None || PyContext_CheckExact(context)) return true;
  PyErr_Format(PyExc_TypeError, "context must be a contextvars.Context or None, got %R", context);
  return false;
}

// KeyboardInterrupt and SystemExit leave run_forever(); everything else
// goes to the exception handler, as in asyncio.
inline bool exception_must_propagate() {
  return PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) || PyErr_ExceptionMatches(PyExc_SystemExit);
}

// Runs a transport's Python callbacks in the transport's contextvars
// context (nullptr: the current one). A context that is already entered
// (the protocol wrote from inside its own callback) is used as it is:
// entering it twice is an error in CPython.
class ContextScope {
 public:
  // Holds its own reference: the callback may free the owner of `context`.
  explicit ContextScope(PyObject* context) : context_(Py_XNewRef(context)) {
    if (context_ != nullptr && PyContext_Enter(context_) != 0) {
      PyErr_Clear();
      Py_CLEAR(context_);
    }
  }
  ~ContextScope() {
    if (context_ == nullptr) return;
    PyObject* exc = fetch_exception();  // what the callback left raised stays raised
    PyContext_Exit(context_);
    if (exc != nullptr) restore_exception(exc);
    Py_DECREF(context_);
  }
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  PyObject* context_;
};

// Makes the heap type `spec` describes (deriving from `base` when given),
// keeps it in `type` for the process, and adds it to `module` under the
// last part of its dotted name.
inline int add_type(PyObject* module, PyType_Spec& spec, PyTypeObject*& type, PyObject* base = nullptr) {
  type = reinterpret_cast<PyTypeObject*>(PyType_FromModuleAndSpec(module, &spec, base));
  if (type == nullptr) return -1;
  return PyModule_AddObjectRef(module, std::strrchr(spec.name, '.') + 1, reinterpret_cast<PyObject*>(type));
}

}  // namespace shardloop::py
