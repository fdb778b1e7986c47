#include "loop_object.hpp"

#include <structmember.h>

#include <climits>
#include <cmath>
#include <exception>
#include <new>
#include <stdexcept>

#include "fd_watch.hpp"
#include "sock_ops.hpp"
#include "handle.hpp"
#include "shardloop/clock.hpp"

namespace shardloop::py {

PyTypeObject* LoopType = nullptr;

namespace {

// asyncio's Future and Task classes, handed over by the Python package.
PyObject* future_type = nullptr;
PyObject* task_type = nullptr;

// Keyword names for calling them, built at import rather than in local
// statics: on a free-threaded build a thread waiting on a C++ static guard
// stays attached and would stall a stop-the-world collection started while
// the guard's owner builds the tuple.
PyObject* kw_loop = nullptr;
PyObject* kw_loop_name = nullptr;
PyObject* kw_loop_context = nullptr;
PyObject* kw_all = nullptr;
PyObject* str_time = nullptr;  // "time", for loop_clock

// --- engine hooks: the GIL is released only while the loop waits ---------

void release_gil(void* ctx) {
  auto* self = static_cast<LoopObject*>(ctx);
  handle_freelist_trim();
  self->waiting_tstate = PyEval_SaveThread();
}

void reacquire_gil(void* ctx) {
  auto* self = static_cast<LoopObject*>(ctx);
  PyEval_RestoreThread(self->waiting_tstate);
  self->waiting_tstate = nullptr;
}

// Hooks::now: asyncio's _run_once judges timers by self.time(). Only when
// Python code has replaced it (on the instance, as mock.patch.object does,
// or in a subclass) is it called; otherwise the engine reads the clock
// itself. What the replacement raises is reported, and the clock is used.
double loop_clock(void* ctx) noexcept {
  auto* self = static_cast<LoopObject*>(ctx);
  auto* obj = reinterpret_cast<PyObject*>(self);
  PyObject* name = str_time;
  PyObject* fn = nullptr;
  if (name != nullptr && Py_TYPE(obj)->tp_dictoffset != 0) {
    PyObject* dict = PyObject_GenericGetDict(obj, nullptr);
    if (dict != nullptr) {
      fn = PyDict_GetItemWithError(dict, name);
      Py_XINCREF(fn);
      Py_DECREF(dict);
    }
  }
  if (fn == nullptr && !PyErr_Occurred() && self->time_overridden && name != nullptr) fn = PyObject_GetAttr(obj, name);
  double now = -1.0;
  if (fn != nullptr) {
    PyObject* r = PyObject_CallNoArgs(fn);
    Py_DECREF(fn);
    if (r != nullptr) {
      now = PyFloat_AsDouble(r);
      Py_DECREF(r);
    }
  }
  if (PyErr_Occurred()) {
    PyErr_WriteUnraisable(obj);
    return monotonic_now();
  }
  return fn != nullptr ? now : monotonic_now();
}

void check_signals(void* ctx) {
  auto* self = static_cast<LoopObject*>(ctx);
  // Runs the Python-level handlers; the default SIGINT one raises
  // KeyboardInterrupt, which ends run_forever like asyncio's loop.
  if (PyErr_CheckSignals() < 0) {
    loop_abort_with_exception(self);
    return;
  }
  // Then add_signal_handler's callbacks, from the signal numbers read off
  // the wakeup fd, as asyncio's _process_self_data does: one still hears its
  // signal while other code has replaced the Python-level handler.
  std::string signals = self->engine->take_signals();
  for (unsigned char sig : signals) {
    if (sig == 0) continue;
    PyObject* r = PyObject_CallMethod(reinterpret_cast<PyObject*>(self), "_handle_signal", "i", static_cast<int>(sig));
    if (r != nullptr) {
      Py_DECREF(r);
    } else if (exception_must_propagate()) {
      loop_abort_with_exception(self);
      return;
    } else {
      PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(self));
    }
  }
}

// --- argument checks shared by the call_* methods --------------------------

bool is_closed(LoopObject* self) {
  return __atomic_load_n(&self->closing, __ATOMIC_RELAXED) || self->engine->is_closed();
}

bool check_open(LoopObject* self) {
  if (is_closed(self)) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return false;
  }
  return true;
}

bool check_thread(LoopObject* self) {
  if (self->thread_id == 0 || self->thread_id == PyThread_get_thread_ident()) return true;
  PyErr_SetString(PyExc_RuntimeError,
                  "Non-thread-safe operation invoked on an event loop other than the current one");
  return false;
}

bool is_coroutine_function(PyObject* fn) {
  if (PyMethod_Check(fn)) fn = PyMethod_GET_FUNCTION(fn);
  if (!PyFunction_Check(fn)) return false;
  auto* code = reinterpret_cast<PyCodeObject*>(PyFunction_GET_CODE(fn));
  return (code->co_flags & CO_COROUTINE) != 0;
}

}  // namespace

bool check_callable(PyObject* callback, const char* method, bool allow_coroutine_function) {
  if (PyCoro_CheckExact(callback) || (!allow_coroutine_function && is_coroutine_function(callback))) {
    PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()", method);
    return false;
  }
  if (!PyCallable_Check(callback)) {
    PyErr_Format(PyExc_TypeError, "a callable object was expected by %s(), got %R", method, callback);
    return false;
  }
  return true;
}

namespace {

// asyncio checks these only in debug mode; shardloop always does, since a
// non-callable can only fail later, far from the call that queued it.
bool check_callback(PyObject* callback, const char* method) {
  return check_callable(callback, method, /*allow_coroutine_function=*/false);
}

// Parses the vectorcall tail `callback, *args, context=None` after `skip`
// leading positional parameters.
bool parse_call(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, Py_ssize_t skip,
                const char* method, const char* first_param, PyObject** context) {
  *context = nullptr;
  if (kwnames) {
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nkw; ++i) {
      PyObject* key = PyTuple_GET_ITEM(kwnames, i);
      if (!PyUnicode_Check(key) || PyUnicode_CompareWithASCIIString(key, "context") != 0) {
        PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'", method, key);
        return false;
      }
      *context = args[nargs + i];
    }
  }
  if (nargs < skip + 1) {
    PyErr_Format(PyExc_TypeError, "%s() missing required positional argument: '%s'", method,
                 nargs < skip ? first_param : "callback");
    return false;
  }
  return true;
}

// Outcomes of queueing work: done, the loop is closed, out of memory, or
// (free-threaded builds) the loop runs on another thread.
enum class Queued { ok, closed, no_memory, elsewhere };

template <typename F>
Queued guarded(F&& f) {
  try {
    return f();
  } catch (const std::logic_error&) {
    return Queued::closed;  // closed by another thread since check_open()
  } catch (...) {
    // The engine's queues throw nothing else than bad_alloc; whatever it
    // is, the work was not queued and the caller must hear so.
    return Queued::no_memory;
  }
}

#ifdef Py_GIL_DISABLED
// Without a GIL nothing stops another thread from touching the engine's
// queues while the loop thread runs them. A thread that does not run the
// loop queues directly only while no thread does (decided under the loop's
// critical section, which loop_run() takes to start); otherwise `f` is not
// called and the work must go through the inbox.
template <typename F>
Queued unless_running_elsewhere(LoopObject* self, F&& f) {
  if (loop_owns_queues(self)) return guarded(f);
  Queued result = Queued::elsewhere;
  Py_BEGIN_CRITICAL_SECTION(self);
  if (self->running_thread == 0) result = guarded(f);
  Py_END_CRITICAL_SECTION();
  return result;
}
#endif

Queued queue_soon(LoopObject* self, Work work, bool threadsafe) {
  auto threadsafe_push = [&] { return self->engine->call_soon_threadsafe(work) ? Queued::ok : Queued::closed; };
#ifdef Py_GIL_DISABLED
  if (threadsafe) return guarded(threadsafe_push);
#else
  // The GIL is the engine's embedder lock: held here, by the loop whenever
  // it touches its queues, and around engine->close().
  if (threadsafe)
    return guarded([&] { return self->engine->call_soon_threadsafe_locked(work) ? Queued::ok : Queued::closed; });
#endif
  auto push = [&] {
    self->engine->call_soon(work);
    return Queued::ok;
  };
#ifdef Py_GIL_DISABLED
  // call_soon() from a thread that does not run the loop is a user error,
  // but it must not corrupt the queue: it gets call_soon_threadsafe().
  Queued queued = unless_running_elsewhere(self, push);
  return queued == Queued::elsewhere ? guarded(threadsafe_push) : queued;
#else
  return guarded(push);
#endif
}

// Raises for a failed Queued (and drops the reference the queue would have
// taken and the caller's); returns false then.
bool queued_or_raise(Queued queued, PyObject* handle) {
  if (queued == Queued::ok) return true;
  Py_DECREF(handle);
  Py_DECREF(handle);
  if (queued == Queued::no_memory) {
    PyErr_NoMemory();
  } else {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
  }
  return false;
}

PyObject* schedule_soon(LoopObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* context,
                        bool threadsafe, const char* method) {
  if (!check_open(self)) return nullptr;
  if (self->debug && !threadsafe && !check_thread(self)) return nullptr;
  if (!check_callback(args[0], method)) return nullptr;
  HandleObject* handle = handle_new(self, false, args[0], args + 1, nargs - 1, context);
  if (handle == nullptr) return nullptr;
  Work work = handle_work(reinterpret_cast<HandleObject*>(Py_NewRef(handle)));
  if (!queued_or_raise(queue_soon(self, work, threadsafe), reinterpret_cast<PyObject*>(handle))) return nullptr;
  return reinterpret_cast<PyObject*>(handle);
}

#ifdef Py_GIL_DISABLED
// Inbox work that puts a timer handle on the heap from the loop's thread;
// it carries the heap's reference.
void schedule_timer_work(void* ctx, bool run) noexcept {
  auto* timer = static_cast<TimerHandleObject*>(ctx);
  if (run && !timer->base.cancelled) {
    try {
      timer->base.loop->engine->schedule(&timer->node, timer->node.when);
      return;
    } catch (...) {
      // Out of memory: the timer is dropped like a cancelled one.
    }
  }
  Py_DECREF(timer);
}
#endif

Queued queue_timer(LoopObject* self, TimerHandleObject* timer, double when) {
  auto push = [&] {
    self->engine->schedule(&timer->node, when);
    return Queued::ok;
  };
#ifdef Py_GIL_DISABLED
  Queued queued = unless_running_elsewhere(self, push);
  if (queued != Queued::elsewhere) return queued;
  timer->node.when = when;
  return guarded([&] {
    return self->engine->call_soon_threadsafe(Work{&schedule_timer_work, timer}) ? Queued::ok : Queued::closed;
  });
#else
  return guarded(push);
#endif
}

PyObject* schedule_at(LoopObject* self, double when, PyObject* const* args, Py_ssize_t nargs,
                      PyObject* context, const char* method, bool when_is_int = false) {
  if (!check_open(self)) return nullptr;
  if (self->debug && !check_thread(self)) return nullptr;
  if (!check_callback(args[0], method)) return nullptr;
  HandleObject* handle = handle_new(self, true, args[0], args + 1, nargs - 1, context);
  if (handle == nullptr) return nullptr;
  auto* timer = reinterpret_cast<TimerHandleObject*>(handle);
  timer->base.when_is_int = when_is_int;
  timer->node.work = handle_work(handle);
  Py_INCREF(handle);  // the timer heap's reference
  if (!queued_or_raise(queue_timer(self, timer, when), reinterpret_cast<PyObject*>(handle))) return nullptr;
  return reinterpret_cast<PyObject*>(handle);
}

// --- methods ---------------------------------------------------------------

PyObject* loop_call_soon(LoopObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (!parse_call(args, nargs, kwnames, 0, "call_soon", "callback", &context)) return nullptr;
  return schedule_soon(self, args, nargs, context, false, "call_soon");
}

PyObject* loop_call_soon_threadsafe(LoopObject* self, PyObject* const* args, size_t nargsf,
                                    PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (!parse_call(args, nargs, kwnames, 0, "call_soon_threadsafe", "callback", &context)) return nullptr;
  return schedule_soon(self, args, nargs, context, true, "call_soon_threadsafe");
}

bool to_seconds(PyObject* value, const char* none_message, double* out) {
  if (value == Py_None) {
    PyErr_SetString(PyExc_TypeError, none_message);
    return false;
  }
  *out = PyFloat_AsDouble(value);
  return !(*out == -1.0 && PyErr_Occurred());
}

PyObject* loop_call_later(LoopObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (!parse_call(args, nargs, kwnames, 1, "call_later", "delay", &context)) return nullptr;
  double delay;
  if (!to_seconds(args[0], "delay must not be None", &delay)) return nullptr;
  return schedule_at(self, monotonic_now() + delay, args + 1, nargs - 1, context, "call_later");
}

PyObject* loop_call_at(LoopObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* context;
  if (!parse_call(args, nargs, kwnames, 1, "call_at", "when", &context)) return nullptr;
  double when;
  if (!to_seconds(args[0], "when cannot be None", &when)) return nullptr;
  return schedule_at(self, when, args + 1, nargs - 1, context, "call_at",
                     PyLong_Check(args[0]) && std::fabs(when) < 9007199254740992.0);
}

PyObject* loop_create_future(LoopObject* self, PyObject*) { return loop_new_future(self); }

// The common case (no task factory, no debug bookkeeping) natively; the
// rest in Python's _create_task_slow.
PyObject* loop_create_task(LoopObject* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  if (nargs != 1) {
    PyErr_Format(PyExc_TypeError, "create_task() takes 1 positional argument but %zd were given", nargs);
    return nullptr;
  }
  PyObject* name = Py_None;
  PyObject* context = Py_None;
  Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    PyObject* key = PyTuple_GET_ITEM(kwnames, i);
    if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "name") == 0) {
      name = args[1 + i];
    } else if (PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "context") == 0) {
      context = args[1 + i];
    } else {
      PyErr_Format(PyExc_TypeError, "create_task() got an unexpected keyword argument '%S'", key);
      return nullptr;
    }
  }
  if (self->task_factory || self->debug || task_type == nullptr) {
    PyObject* slow_args[] = {args[0], name, context};
    return upcall(self, Upcall::create_task_slow, slow_args, 3);
  }
  if (!check_open(self)) return nullptr;
  PyObject* call_args[4] = {args[0], reinterpret_cast<PyObject*>(self), name, context};
  PyObject* names = kw_loop;
  if (name != Py_None && context != Py_None) {
    names = kw_all;
  } else if (name != Py_None) {
    names = kw_loop_name;
  } else if (context != Py_None) {
    names = kw_loop_context;
    call_args[2] = context;
  }
  return PyObject_Vectorcall(task_type, call_args, 1, names);
}

// A critical section: without a GIL, a set from another thread must not free
// the factory while it is being read.
PyObject* get_task_factory(LoopObject* self, void*) {
  PyObject* factory;
  Py_BEGIN_CRITICAL_SECTION(self);
  factory = Py_NewRef(self->task_factory ? self->task_factory : Py_None);
  Py_END_CRITICAL_SECTION();
  return factory;
}

int set_task_factory(LoopObject* self, PyObject* value, void*) {
  PyObject* old;
  Py_BEGIN_CRITICAL_SECTION(self);
  old = self->task_factory;
  self->task_factory = value == nullptr || value == Py_None ? nullptr : Py_NewRef(value);
  Py_END_CRITICAL_SECTION();
  Py_XDECREF(old);
  return 0;
}

PyObject* loop_time(LoopObject*, PyObject*) { return PyFloat_FromDouble(monotonic_now()); }

PyObject* loop_stop(LoopObject* self, PyObject*) {
  self->engine->stop();
  Py_RETURN_NONE;
}

PyObject* loop_is_running(LoopObject* self, PyObject*) { return PyBool_FromLong(self->engine->is_running()); }

PyObject* loop_is_closed(LoopObject* self, PyObject*) { return PyBool_FromLong(is_closed(self)); }

PyObject* loop_get_debug(LoopObject* self, PyObject*) { return PyBool_FromLong(self->debug); }

PyObject* loop_set_debug(LoopObject* self, PyObject* enabled) {
  int flag = PyObject_IsTrue(enabled);
  if (flag < 0) return nullptr;
  self->debug = flag;
  Py_RETURN_NONE;
}

// The native core of run_forever(); the Python subclass sets up the rest.
PyObject* loop_run(LoopObject* self, PyObject*) {
  bool busy, closed;
  // Decided under the section loop_close_native() decides in: a close()
  // either sees this run (running_thread) or this run sees it (closing).
  Py_BEGIN_CRITICAL_SECTION(self);
  closed = is_closed(self);
#ifdef Py_GIL_DISABLED
  busy = !closed && self->running_thread != 0;
  if (!closed && !busy) __atomic_store_n(&self->running_thread, PyThread_get_thread_ident(), __ATOMIC_RELAXED);
#else
  busy = self->engine->is_running();
#endif
  Py_END_CRITICAL_SECTION();
  if (closed) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  if (busy) {
    PyErr_SetString(PyExc_RuntimeError, "This event loop is already running");
    return nullptr;
  }
  bool failed = false;
  sock_ops_prepare(self);
  try {
    self->engine->run();
  } catch (...) {
    set_error_from_cpp();
    failed = true;
  }
#ifdef Py_GIL_DISABLED
  Py_BEGIN_CRITICAL_SECTION(self);
  __atomic_store_n(&self->running_thread, 0UL, __ATOMIC_RELAXED);
  Py_END_CRITICAL_SECTION();
#endif
  if (failed) return nullptr;
  if (self->pending_exception) {
    PyObject* exc = self->pending_exception;
    self->pending_exception = nullptr;
    restore_exception(exc);
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* loop_close_native(LoopObject* self, PyObject*) {
  bool running, failed = false;
  // One critical section from the check to the close: loop_run() takes the
  // loop under it, and direct queueing from other threads (queue_soon) is
  // decided under it. `closing` holds the decision even where finalizers
  // run below suspend the section (or release the GIL).
  Py_BEGIN_CRITICAL_SECTION(self);
#ifdef Py_GIL_DISABLED
  running = self->running_thread != 0 || self->engine->is_running();
#else
  running = self->engine->is_running();
#endif
  if (!running) {
    __atomic_store_n(&self->closing, true, __ATOMIC_RELAXED);
    fd_watches_clear(self);
    sock_ops_clear(self);
    try {
      self->engine->close();
    } catch (...) {
      set_error_from_cpp();
      failed = true;
    }
  }
  Py_END_CRITICAL_SECTION();
  if (running) {
    PyErr_SetString(PyExc_RuntimeError, "Cannot close a running event loop");
    return nullptr;
  }
  if (failed) return nullptr;
  Py_RETURN_NONE;
}

PyObject* loop_signal_wakeup_fd(LoopObject* self, PyObject*) {
  try {
    return PyLong_FromLong(self->engine->signal_wakeup_fd());
  } catch (...) {
    set_error_from_cpp();
    return nullptr;
  }
}

// _forward_signals(fd): signal bytes the loop reads go on to `fd` (-1: off).
PyObject* loop_forward_signals(LoopObject* self, PyObject* arg) {
  long fd = PyLong_AsLong(arg);
  if (fd == -1 && PyErr_Occurred()) return nullptr;
  if (fd < -1 || fd > INT_MAX) {
    PyErr_SetString(PyExc_ValueError, "fd out of range");
    return nullptr;
  }
  self->engine->set_signal_forward_fd(static_cast<int>(fd));
  Py_RETURN_NONE;
}

// _after_fork(): in a fork child, new kernel objects for this loop.
PyObject* loop_after_fork(LoopObject* self, PyObject*) {
  try {
    self->engine->after_fork();
    sock_ops_after_fork(self);
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* loop_pending_counts(LoopObject* self, PyObject*) {
  return Py_BuildValue("nn", static_cast<Py_ssize_t>(self->engine->ready_count()),
                       static_cast<Py_ssize_t>(self->engine->timer_count()));
}

PyObject* get_fd_transports(LoopObject* self, void*) {
  if (self->fd_transports == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "the loop is being finalized");
    return nullptr;
  }
  return Py_NewRef(self->fd_transports);
}

PyObject* get_thread_id(LoopObject* self, void*) {
  if (self->thread_id == 0) Py_RETURN_NONE;
  return PyLong_FromUnsignedLong(self->thread_id);
}

int set_thread_id(LoopObject* self, PyObject* value, void*) {
  if (value == nullptr || value == Py_None) {
    self->thread_id = 0;
    return 0;
  }
  unsigned long id = PyLong_AsUnsignedLong(value);
  if (id == static_cast<unsigned long>(-1) && PyErr_Occurred()) return -1;
  self->thread_id = id;
  return 0;
}

PyObject* get_slow_callback_duration(LoopObject* self, void*) {
  return PyFloat_FromDouble(self->slow_callback_duration);
}

int set_slow_callback_duration(LoopObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "slow_callback_duration cannot be deleted");
    return -1;
  }
  double seconds = PyFloat_AsDouble(value);
  if (seconds == -1.0 && PyErr_Occurred()) return -1;
  self->slow_callback_duration = seconds;
  return 0;
}

#define FASTCALL_KW(fn) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL | METH_KEYWORDS

PyMethodDef loop_methods[] = {
    {"call_soon", FASTCALL_KW(loop_call_soon), nullptr},
    {"call_soon_threadsafe", FASTCALL_KW(loop_call_soon_threadsafe), nullptr},
    {"call_later", FASTCALL_KW(loop_call_later), nullptr},
    {"call_at", FASTCALL_KW(loop_call_at), nullptr},
    {"time", reinterpret_cast<PyCFunction>(loop_time), METH_NOARGS, nullptr},
    {"create_future", reinterpret_cast<PyCFunction>(loop_create_future), METH_NOARGS, nullptr},
    {"create_task", FASTCALL_KW(loop_create_task), nullptr},
    {"stop", reinterpret_cast<PyCFunction>(loop_stop), METH_NOARGS, nullptr},
    {"is_running", reinterpret_cast<PyCFunction>(loop_is_running), METH_NOARGS, nullptr},
    {"is_closed", reinterpret_cast<PyCFunction>(loop_is_closed), METH_NOARGS, nullptr},
    {"get_debug", reinterpret_cast<PyCFunction>(loop_get_debug), METH_NOARGS, nullptr},
    {"set_debug", reinterpret_cast<PyCFunction>(loop_set_debug), METH_O, nullptr},
    {"_set_io_backend", reinterpret_cast<PyCFunction>(loop_set_io_backend), METH_O, nullptr},
    {"_io_stats", reinterpret_cast<PyCFunction>(loop_io_stats), METH_NOARGS, nullptr},
    {"_run", reinterpret_cast<PyCFunction>(loop_run), METH_NOARGS, nullptr},
    {"_close_native", reinterpret_cast<PyCFunction>(loop_close_native), METH_NOARGS, nullptr},
    {"_add_reader", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_add_reader)), METH_FASTCALL, nullptr},
    {"_add_listener", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_add_listener)), METH_FASTCALL, nullptr},
    {"_add_writer", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_add_writer)), METH_FASTCALL, nullptr},
    {"_remove_reader", reinterpret_cast<PyCFunction>(loop_remove_reader), METH_O, nullptr},
    {"_ring_accept_start", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_ring_accept_start)), METH_FASTCALL, nullptr},
    {"_ring_accept_stop", reinterpret_cast<PyCFunction>(loop_ring_accept_stop), METH_O, nullptr},
    {"_ring_accept_resume", reinterpret_cast<PyCFunction>(loop_ring_accept_resume), METH_O, nullptr},
    {"_remove_writer", reinterpret_cast<PyCFunction>(loop_remove_writer), METH_O, nullptr},
    {"_note_fileobj", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_note_fileobj)), METH_FASTCALL, nullptr},
    {"_watched_fd", reinterpret_cast<PyCFunction>(loop_watched_fd), METH_O, nullptr},
    {"_sock_recv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_recv)), METH_FASTCALL, nullptr},
    {"_sock_recv_into", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_recv_into)), METH_FASTCALL, nullptr},
    {"_sock_recvfrom", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_recvfrom)), METH_FASTCALL, nullptr},
    {"_sock_recvfrom_into", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_recvfrom_into)), METH_FASTCALL, nullptr},
    {"_sock_sendto", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_sendto)), METH_FASTCALL, nullptr},
    {"_sock_sendall", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_sendall)), METH_FASTCALL, nullptr},
    {"_sock_accept", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_accept)), METH_FASTCALL, nullptr},
    {"_sock_connect", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_connect)), METH_FASTCALL, nullptr},
    {"_sock_forget", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(loop_sock_forget)), METH_FASTCALL, nullptr},
    {"_signal_wakeup_fd", reinterpret_cast<PyCFunction>(loop_signal_wakeup_fd), METH_NOARGS, nullptr},
    {"_forward_signals", reinterpret_cast<PyCFunction>(loop_forward_signals), METH_O, nullptr},
    {"_after_fork", reinterpret_cast<PyCFunction>(loop_after_fork), METH_NOARGS, nullptr},
    {"_pending_counts", reinterpret_cast<PyCFunction>(loop_pending_counts), METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef loop_getset[] = {
    {"io_backend", reinterpret_cast<getter>(loop_get_io_backend), nullptr, "\"epoll\" or \"io_uring\"", nullptr},
    {"_task_factory", reinterpret_cast<getter>(get_task_factory), reinterpret_cast<setter>(set_task_factory),
     nullptr, nullptr},
    {"_fd_transports", reinterpret_cast<getter>(get_fd_transports), nullptr, nullptr, nullptr},
    {"_thread_id", reinterpret_cast<getter>(get_thread_id), reinterpret_cast<setter>(set_thread_id), nullptr, nullptr},
    {"slow_callback_duration", reinterpret_cast<getter>(get_slow_callback_duration),
     reinterpret_cast<setter>(set_slow_callback_duration), nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyObject* loop_new(PyTypeObject* type, PyObject*, PyObject*) {
  auto* self = reinterpret_cast<LoopObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->slow_callback_duration = 0.1;
  if (upcalls_resolve(self, type) < 0) {
    Py_DECREF(self);
    return nullptr;
  }
  self->fd_transports = PyDict_New();
  if (self->fd_transports == nullptr) {
    Py_DECREF(self);
    return nullptr;
  }
  try {
    self->fd_watches = fd_watches_new();
    self->sock_ops = sock_ops_new();
    self->engine = new Loop();
  } catch (const std::bad_alloc&) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  } catch (const std::exception& e) {
    Py_DECREF(self);
    PyErr_SetString(PyExc_OSError, e.what());
    return nullptr;
  } catch (...) {
    Py_DECREF(self);
    set_error_from_cpp();
    return nullptr;
  }
  self->time_overridden = _PyType_Lookup(Py_TYPE(self), str_time) != _PyType_Lookup(LoopType, str_time);
  self->engine->set_hooks(Loop::Hooks{self, &release_gil, &reacquire_gil, &check_signals, &loop_clock});
  return reinterpret_cast<PyObject*>(self);
}

// Queued handles reference the loop, so an unclosed loop with pending
// callbacks is a cycle; visiting them lets the collector find it (and the
// finalizer then closes the loop with a ResourceWarning, as asyncio does).
int loop_traverse(LoopObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->pending_exception);
  Py_VISIT(self->task_factory);
  for (PyObject* fn : self->upcalls) Py_VISIT(fn);
  Py_VISIT(self->fd_transports);
  if (int fd_rc = fd_watches_traverse(self->fd_watches, visit, arg)) return fd_rc;
  if (int sock_rc = sock_ops_traverse(self->sock_ops, visit, arg)) return sock_rc;
  int rc = 0;
  if (self->engine && !self->engine->is_closed()) {
    self->engine->for_each_pending([&](const Work& work) {
      if (rc == 0) {
        if (HandleObject* handle = handle_of(work)) rc = visit(reinterpret_cast<PyObject*>(handle), arg);
      }
    });
  }
  return rc;
}

int loop_clear(LoopObject* self) {
  Py_CLEAR(self->pending_exception);
  Py_CLEAR(self->task_factory);
  // Drops the handles reported by loop_traverse.
  if (self->engine && !self->engine->is_running()) {
    fd_watches_clear(self);
    sock_ops_clear(self);
    __atomic_store_n(&self->closing, true, __ATOMIC_RELAXED);
    try {
      self->engine->close();
    } catch (...) {
      // tp_clear cannot fail; what is left open goes with the engine.
    }
  }
  return 0;
}

void loop_dealloc(LoopObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->engine) {
    // Discarding queued handles may run arbitrary finalizers.
    if (self->engine->is_running()) {
      PyErr_WarnEx(PyExc_RuntimeWarning, "shardloop: deallocating a running loop", 1);
    }
    fd_watches_clear(self);
    sock_ops_clear(self);
    delete self->engine;
    self->engine = nullptr;
  }
  fd_watches_free(self->fd_watches);
  self->fd_watches = nullptr;
  sock_ops_free(self->sock_ops);
  self->sock_ops = nullptr;
  loop_clear(self);
  // Not in loop_clear: a cleared loop that something still reaches may
  // call them again.
  for (PyObject*& fn : self->upcalls) Py_CLEAR(fn);
  Py_CLEAR(self->fd_transports);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot loop_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(loop_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(loop_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(loop_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(loop_clear)},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getset},
    {Py_tp_doc, const_cast<char*>("Native core of shardloop.Loop (libuv).")},
    {0, nullptr},
};

PyType_Spec loop_spec = {
    "shardloop._core.Loop", sizeof(LoopObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, loop_slots,
};

}  // namespace

void loop_abort_with_exception(LoopObject* loop) {
  if (!loop->engine->is_running()) {
    // No run to end (a libuv callback run by close()): kept for a later
    // run it would end at once for no visible reason, it is reported here.
    PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(loop));
    return;
  }
  PyObject* exc = fetch_exception();
  Py_XSETREF(loop->pending_exception, exc);
  loop->engine->abort();
}

namespace {

// Python-side hooks may fail too; what they raise is handled like what a
// callback raises, except that it cannot go to the exception handler again.
void finish_hook_call(LoopObject* loop, PyObject* result, HandleObject* handle) {
  if (result) {
    Py_DECREF(result);
  } else if (exception_must_propagate()) {
    loop_abort_with_exception(loop);
  } else {
    PyErr_WriteUnraisable(reinterpret_cast<PyObject*>(handle));
  }
}

}  // namespace

void loop_report_callback_error(LoopObject* loop, HandleObject* handle) {
  PyObject* exc = fetch_exception();
  PyObject* error_args[] = {reinterpret_cast<PyObject*>(handle), exc};
  PyObject* r = upcall(loop, Upcall::callback_error, error_args, 2);
  Py_DECREF(exc);
  finish_hook_call(loop, r, handle);
}

void loop_log_slow_callback(LoopObject* loop, HandleObject* handle, double seconds) {
  PyObject* secs = PyFloat_FromDouble(seconds);
  if (secs == nullptr) {
    finish_hook_call(loop, nullptr, handle);
    return;
  }
  PyObject* slow_args[] = {reinterpret_cast<PyObject*>(handle), secs};
  PyObject* r = upcall(loop, Upcall::log_slow_callback, slow_args, 2);
  Py_DECREF(secs);
  finish_hook_call(loop, r, handle);
}

PyObject* loop_new_future(LoopObject* loop) {
  PyObject* args[] = {reinterpret_cast<PyObject*>(loop)};
  return PyObject_Vectorcall(future_type, args, 0, kw_loop);
}

PyObject* set_asyncio_types(PyObject*, PyObject* args) {
  PyObject *future, *task;
  if (!PyArg_ParseTuple(args, "OO", &future, &task)) return nullptr;
  Py_XSETREF(future_type, Py_NewRef(future));
  Py_XSETREF(task_type, Py_NewRef(task));
  Py_RETURN_NONE;
}

int init_loop_type(PyObject* module) {
  kw_loop = Py_BuildValue("(s)", "loop");
  kw_loop_name = Py_BuildValue("(ss)", "loop", "name");
  kw_loop_context = Py_BuildValue("(ss)", "loop", "context");
  kw_all = Py_BuildValue("(sss)", "loop", "name", "context");
  str_time = PyUnicode_InternFromString("time");
  if (!kw_loop || !kw_loop_name || !kw_loop_context || !kw_all || !str_time) return -1;
  return add_type(module, loop_spec, LoopType);
}

}  // namespace shardloop::py
