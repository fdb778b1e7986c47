#include "loop_upcalls.hpp"

#include "loop_object.hpp"

namespace shardloop::py {

namespace {

constexpr const char* kNames[kUpcallCount] = {
    "_create_task_slow", "_callback_error", "_log_slow_callback", "_handle_repr", "_extract_stack",
    "_ensure_fd_no_transport",
};

}  // namespace

int upcalls_resolve(LoopObject* loop, PyTypeObject* type) {
  for (int i = 0; i < kUpcallCount; ++i) {
    // The class attribute, not the instance's: a plain function, called
    // with the loop as its first argument.
    PyObject* fn = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), kNames[i]);
    if (fn == nullptr) {
      if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Format(PyExc_TypeError, "%s cannot be created: it lacks %s (see LoopUpcalls in shardloop/_core.pyi)",
                     type->tp_name, kNames[i]);
      }
      return -1;
    }
    Py_XSETREF(loop->upcalls[i], fn);
  }
  return 0;
}

PyObject* upcall_names() {
  PyObject* names = PyTuple_New(kUpcallCount);
  if (names == nullptr) return nullptr;
  for (int i = 0; i < kUpcallCount; ++i) {
    PyObject* name = PyUnicode_FromString(kNames[i]);
    if (name == nullptr) {
      Py_DECREF(names);
      return nullptr;
    }
    PyTuple_SET_ITEM(names, i, name);
  }
  return names;
}

PyObject* upcall(LoopObject* loop, Upcall which, PyObject* const* args, size_t nargs) {
  constexpr size_t kMaxArgs = 3;
  PyObject* stack[1 + kMaxArgs];
  if (nargs > kMaxArgs) {
    PyErr_SetString(PyExc_SystemError, "shardloop: too many arguments for an upcall");
    return nullptr;
  }
  stack[0] = reinterpret_cast<PyObject*>(loop);
  for (size_t i = 0; i < nargs; ++i) stack[1 + i] = args[i];
  return PyObject_Vectorcall(loop->upcalls[static_cast<int>(which)], stack, 1 + nargs, nullptr);
}

}  // namespace shardloop::py
