// shardloop._core.Runtime: the engine's thread-per-core Runtime driving
// Python loops. Each shard is a `_core.Loop` attached on its own thread;
// a Python call posted to a shard travels as one Handle reference through
// the runtime's queues (a single-producer ring per pair of shards, a
// multi-producer queue for other threads), and the target wakes only when
// it was about to block.
//
// GIL: the queues are native. A posted Handle is made (and INCREF'd) on the
// posting thread, which holds the GIL; the target's Runtime::feed runs
// inside its loop iteration after Loop::resume() has retaken the GIL, and
// moves the Handle to the loop's ready queue, so it runs in that
// iteration's batch like call_soon work. Work discarded at shutdown is
// dropped from whatever thread settles the queues, under
// PyGILState_Ensure(), which works whether or not that thread holds the GIL.
// detach() releases the GIL while it waits for the other shards.
#include <atomic>
#include <cstdio>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "handle.hpp"
#include "loop_object.hpp"
#include "shardloop/runtime.hpp"

namespace shardloop::py {

int init_runtime_type(PyObject* module);

namespace {

struct RuntimeObject {
  PyObject_HEAD
  Runtime* rt;
  unsigned count;
  // The attached shards' loops (strong references), cleared by detach().
  std::atomic<LoopObject*>* loops;
  // Loops of shards that abandoned the runtime: kept alive until it goes,
  // since late senders may still wake them (a list, or nullptr).
  PyObject* abandoned;
};

// Drops a reference from a thread that may or may not hold the GIL.
void decref_anywhere(PyObject* obj) noexcept {
  PyGILState_STATE gil = PyGILState_Ensure();
  Py_DECREF(obj);
  PyGILState_Release(gil);
}

// The Work of a post: `ctx` is a Handle made for the target shard's loop.
void relay_handle(void* ctx, bool run) noexcept {
  auto* handle = static_cast<HandleObject*>(ctx);
  if (!run) {
    decref_anywhere(reinterpret_cast<PyObject*>(handle));
    return;
  }
  // On the target's thread, in its iteration, GIL held.
  Loop* engine = handle->loop->engine;
  try {
    engine->call_soon(handle_work(handle));
  } catch (...) {
    engine->report_error(std::current_exception());
    Py_DECREF(handle);
  }
}

// A post whose sender wants to hear when it is discarded: `stopped()` is
// then queued on the sender's shard (called in place when the sender is not
// a shard).
struct Request {
  HandleObject* call;
  PyObject* stopped;
  RuntimeObject* owner;  // borrowed: a runtime outlives its queued work
  int caller;
};

void tell_stopped(Request* r) noexcept {
  // GIL held.
  RuntimeObject* self = r->owner;
  if (r->caller < 0) {
    PyObject* result = PyObject_CallNoArgs(r->stopped);
    if (result == nullptr) PyErr_WriteUnraisable(r->stopped);
    Py_XDECREF(result);
    Py_DECREF(r->stopped);
    return;
  }
  LoopObject* loop = self->loops[r->caller].load(std::memory_order_acquire);
  HandleObject* handle = loop ? handle_new(loop, false, r->stopped, nullptr, 0, nullptr) : nullptr;
  if (loop && handle == nullptr) PyErr_WriteUnraisable(r->stopped);
  Py_DECREF(r->stopped);
  if (handle == nullptr) return;
  bool sent = false;
  try {
    sent = self->rt->post(static_cast<unsigned>(r->caller), Work{&relay_handle, handle});
  } catch (...) {
  }
  if (!sent) Py_DECREF(handle);  // the sender's shard is gone: nobody waits
}

void relay_request(void* ctx, bool run) noexcept {
  auto* r = static_cast<Request*>(ctx);
  if (run) {
    relay_handle(r->call, true);
    Py_DECREF(r->stopped);
  } else {
    PyGILState_STATE gil = PyGILState_Ensure();
    Py_DECREF(r->call);
    tell_stopped(r);
    PyGILState_Release(gil);
  }
  delete r;
}

// --- argument checks ---------------------------------------------------

bool shard_arg(RuntimeObject* self, PyObject* value, unsigned* out) {
  if (!PyLong_Check(value) || PyBool_Check(value)) {
    PyErr_Format(PyExc_TypeError, "shard must be an int, got %.200s", Py_TYPE(value)->tp_name);
    return false;
  }
  long shard = PyLong_AsLong(value);
  if (shard == -1 && PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return false;
    PyErr_Clear();
  }
  if (shard < 0 || static_cast<unsigned long>(shard) >= self->count) {
    PyErr_Format(PyExc_ValueError, "shard %S out of range(0, %u)", value, self->count);
    return false;
  }
  *out = static_cast<unsigned>(shard);
  return true;
}

// Coroutine functions are welcome: the receiving shard runs them as tasks.
bool callback_arg(PyObject* callback, const char* method) {
  return check_callable(callback, method, /*allow_coroutine_function=*/true);
}

// --- posting ---------------------------------------------------------------

// These return 1 when queued, 0 when the shard no longer takes work, -1 with
// a Python error set; on 0 and -1 the caller still owns what it passed.

// On the shard's own thread: straight onto its ready queue, in call order.
int queue_here(LoopObject* loop, HandleObject* handle) {
  if (loop->engine->is_closed()) return 0;
  try {
    loop->engine->call_soon(handle_work(handle));
  } catch (...) {
    set_error_from_cpp();
    return -1;
  }
  return 1;
}

int queue_there(RuntimeObject* self, unsigned shard, Work work) {
  try {
    return self->rt->post(shard, work) ? 1 : 0;
  } catch (...) {
    set_error_from_cpp();
  }
  return -1;
}

PyObject* queued(int rc) {
  if (rc < 0) return nullptr;
  return PyBool_FromLong(rc);
}

// post(shard, callback, *args) -> bool
PyObject* runtime_post(RuntimeObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 2) {
    PyErr_SetString(PyExc_TypeError, "post() takes a shard and a callback");
    return nullptr;
  }
  unsigned shard;
  if (!shard_arg(self, args[0], &shard) || !callback_arg(args[1], "post")) return nullptr;
  LoopObject* loop = self->loops[shard].load(std::memory_order_acquire);
  if (loop == nullptr) Py_RETURN_FALSE;
  HandleObject* handle = handle_new(loop, false, args[1], args + 2, nargs - 2, nullptr);
  if (handle == nullptr) return nullptr;
  int rc = self->rt->on_shard(shard) ? queue_here(loop, handle)
                                     : queue_there(self, shard, Work{&relay_handle, handle});
  if (rc <= 0) Py_DECREF(handle);
  return queued(rc);
}

// request(shard, stopped, callback, *args) -> bool: post() that calls
// `stopped()` back on this shard if the call is discarded unrun.
PyObject* runtime_request(RuntimeObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs < 3) {
    PyErr_SetString(PyExc_TypeError, "request() takes a shard, a stopped callback and a callback");
    return nullptr;
  }
  unsigned shard;
  if (!shard_arg(self, args[0], &shard) || !callback_arg(args[1], "request") ||
      !callback_arg(args[2], "request"))
    return nullptr;
  LoopObject* loop = self->loops[shard].load(std::memory_order_acquire);
  if (loop == nullptr) Py_RETURN_FALSE;
  HandleObject* handle = handle_new(loop, false, args[2], args + 3, nargs - 3, nullptr);
  if (handle == nullptr) return nullptr;
  if (self->rt->on_shard(shard)) {
    // Queued behind this very thread: it runs unless the loop closes first,
    // and then nobody here is waiting for it.
    int rc = queue_here(loop, handle);
    if (rc <= 0) Py_DECREF(handle);
    return queued(rc);
  }
  int caller = Runtime::current() == self->rt ? Runtime::this_shard() : -1;
  auto* r = new (std::nothrow) Request{handle, Py_NewRef(args[1]), self, caller};
  if (r == nullptr) {
    Py_DECREF(handle);
    Py_DECREF(args[1]);
    return PyErr_NoMemory();
  }
  int rc = queue_there(self, shard, Work{&relay_request, r});
  if (rc <= 0) {
    Py_DECREF(r->call);
    Py_DECREF(r->stopped);
    delete r;
  }
  return queued(rc);
}

// --- lifecycle ---------------------------------------------------------------

// attach(shard, loop): on the thread that will run `loop` as `shard`.
PyObject* runtime_attach(RuntimeObject* self, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) {
    PyErr_SetString(PyExc_TypeError, "attach() takes a shard and a loop");
    return nullptr;
  }
  unsigned shard;
  if (!shard_arg(self, args[0], &shard)) return nullptr;
  if (!PyObject_TypeCheck(args[1], LoopType)) {
    PyErr_Format(PyExc_TypeError, "attach() needs a shardloop loop, got %.200s", Py_TYPE(args[1])->tp_name);
    return nullptr;
  }
  auto* loop = reinterpret_cast<LoopObject*>(args[1]);
  if (loop->engine->is_closed()) {
    PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
    return nullptr;
  }
  std::string error;
  // attach() takes the runtime's lock, which a shard may hold while it
  // waits for the others: never wait for it holding the GIL.
  Py_BEGIN_ALLOW_THREADS
  try {
    self->rt->attach(shard, *loop->engine);
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "attach() failed";
  } catch (...) {
    error = "attach() failed";
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  Py_INCREF(loop);
  self->loops[shard].store(loop, std::memory_order_release);
  Py_RETURN_NONE;
}

// The calling thread's shard of this runtime, whose loop has returned;
// -1 with RuntimeError set otherwise. `verb` names the method.
int stopped_shard(RuntimeObject* self, const char* verb) {
  int shard = Runtime::current() == self->rt ? Runtime::this_shard() : -1;
  if (shard < 0) {
    PyErr_Format(PyExc_RuntimeError, "%s() needs the thread of an attached shard", verb);
    return -1;
  }
  if (self->loops[shard].load(std::memory_order_acquire)->engine->is_running()) {
    PyErr_Format(PyExc_RuntimeError, "%s() while the shard's loop runs", verb);
    return -1;
  }
  return shard;
}

// Runs the engine's detach() or abandon() with the GIL released (both take
// the runtime's lock, never awaited holding the GIL), then empties the
// shard's slot: posting threads read it under the GIL (or, free-threaded,
// while the Python runtime's own list still holds the loop).
PyObject* leave_shard(RuntimeObject* self, int shard, void (Runtime::*leave)(), const char* verb) {
  std::string error;
  Py_BEGIN_ALLOW_THREADS
  try {
    (self->rt->*leave)();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = std::string(verb) + "() failed";
  } catch (...) {
    error = std::string(verb) + "() failed";
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  Py_XDECREF(self->loops[shard].exchange(nullptr, std::memory_order_acq_rel));
  Py_RETURN_NONE;
}

// detach(): on a shard's thread once its loop has returned. Every shard
// stops; the queues are settled (requests answered with stopped(), the
// rest dropped) together with the other shards, so this returns only when
// every attached shard has called it.
PyObject* runtime_detach(RuntimeObject* self, PyObject*) {
  int shard = stopped_shard(self, "detach");
  return shard < 0 ? nullptr : leave_shard(self, shard, &Runtime::detach, "detach");
}

// abandon(): detach() for a shard that will not wait for the others (one
// of them is stuck): returns at once (it waits only for posts in flight);
// see Runtime::abandon(). The loop is kept alive in `abandoned`.
PyObject* runtime_abandon(RuntimeObject* self, PyObject*) {
  int shard = stopped_shard(self, "abandon");
  if (shard < 0) return nullptr;
  auto* loop = reinterpret_cast<PyObject*>(self->loops[shard].load(std::memory_order_acquire));
  if (self->abandoned == nullptr && (self->abandoned = PyList_New(0)) == nullptr) return nullptr;
  if (PyList_Append(self->abandoned, loop) < 0) return nullptr;
  return leave_shard(self, shard, &Runtime::abandon, "abandon");
}

PyObject* runtime_after_fork(PyObject*, PyObject*) {
  Runtime::forget_thread_after_fork();
  Py_RETURN_NONE;
}

PyObject* runtime_stats(RuntimeObject* self, PyObject*) {
  Runtime::Stats st = self->rt->stats();
  return Py_BuildValue("{sKsK}", "wakeups", static_cast<unsigned long long>(st.wakeups), "overflows",
                       static_cast<unsigned long long>(st.overflows));
}

PyObject* get_shard_count(RuntimeObject* self, void*) { return PyLong_FromUnsignedLong(self->count); }

PyObject* get_pinned(RuntimeObject* self, void*) { return PyBool_FromLong(self->rt->pinned()); }

PyObject* runtime_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"shards", "pin", "ring_capacity", nullptr};
  PyObject* shards_obj;
  int pin = 0;
  Py_ssize_t ring_capacity = 1024;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$pn:Runtime", const_cast<char**>(keywords), &shards_obj, &pin,
                                   &ring_capacity))
    return nullptr;
  if (!PyLong_Check(shards_obj) || PyBool_Check(shards_obj)) {
    PyErr_Format(PyExc_TypeError, "shards must be an int, got %.200s", Py_TYPE(shards_obj)->tp_name);
    return nullptr;
  }
  long shards = PyLong_AsLong(shards_obj);
  if (shards == -1 && PyErr_Occurred()) return nullptr;
  if (shards < 1 || shards > static_cast<long>(Runtime::kMaxShards)) {
    PyErr_Format(PyExc_ValueError, "shards must be in range(1, %u), got %ld", Runtime::kMaxShards + 1, shards);
    return nullptr;
  }
  if (ring_capacity < 1) {
    PyErr_SetString(PyExc_ValueError, "ring_capacity must be at least 1");
    return nullptr;
  }
  auto* self = reinterpret_cast<RuntimeObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  try {
    Runtime::Options options;
    options.shards = static_cast<unsigned>(shards);
    options.pin = pin != 0;
    options.ring_capacity = static_cast<std::size_t>(ring_capacity);
    self->loops = new std::atomic<LoopObject*>[shards];
    for (long s = 0; s < shards; ++s) self->loops[s].store(nullptr, std::memory_order_relaxed);
    self->rt = new Runtime(options);
  } catch (const std::invalid_argument& e) {
    Py_DECREF(self);
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  } catch (...) {
    Py_DECREF(self);
    set_error_from_cpp();
    return nullptr;
  }
  self->count = static_cast<unsigned>(shards);
  return reinterpret_cast<PyObject*>(self);
}

void runtime_dealloc(RuntimeObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  bool attached = false;
  for (unsigned s = 0; self->loops && s < self->count; ++s)
    attached = attached || self->loops[s].load(std::memory_order_relaxed) != nullptr;
  if (attached) {
    // The engine aborts on a runtime destroyed under attached shards; its
    // threads may still be inside it. Leaking it is the safe way out.
    std::fprintf(stderr, "shardloop: Runtime deallocated while shards are attached; leaking it\n");
  } else {
    // Discards what never ran (under PyGILState_Ensure, re-entrant here).
    delete self->rt;
    delete[] self->loops;
    Py_XDECREF(self->abandoned);
  }
  type->tp_free(self);
  Py_DECREF(type);
}

#define FASTCALL(fn) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fn)), METH_FASTCALL

PyMethodDef runtime_methods[] = {
    {"post", FASTCALL(runtime_post),
     "post(shard, callback, *args) -> bool: run callback(*args) on that shard's loop, as call_soon "
     "there would; False when the shard no longer takes work."},
    {"request", FASTCALL(runtime_request),
     "request(shard, stopped, callback, *args) -> bool: post(), and stopped() runs on this shard "
     "if the call is discarded at shutdown."},
    {"attach", FASTCALL(runtime_attach), "attach(shard, loop): this thread runs loop as shard."},
    {"detach", reinterpret_cast<PyCFunction>(runtime_detach), METH_NOARGS,
     "detach(): this shard leaves; returns once every attached shard has detached."},
    {"abandon", reinterpret_cast<PyCFunction>(runtime_abandon), METH_NOARGS,
     "abandon(): this shard leaves without waiting for the others (one is stuck)."},
    {"_after_fork", reinterpret_cast<PyCFunction>(runtime_after_fork), METH_NOARGS | METH_STATIC,
     "_after_fork(): in a fork child, this thread is no longer a shard."},
    {"stats", reinterpret_cast<PyCFunction>(runtime_stats), METH_NOARGS,
     "stats() -> {'wakeups': n, 'overflows': n}"},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef runtime_getset[] = {
    {"shard_count", reinterpret_cast<getter>(get_shard_count), nullptr, nullptr, nullptr},
    {"pinned", reinterpret_cast<getter>(get_pinned), nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot runtime_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(runtime_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(runtime_dealloc)},
    {Py_tp_methods, runtime_methods},
    {Py_tp_getset, runtime_getset},
    {Py_tp_doc, const_cast<char*>("Runtime(shards, *, pin=False, ring_capacity=1024): the native "
                                  "thread-per-core runtime (lock-free cross-shard queues).")},
    {0, nullptr},
};

PyType_Spec runtime_spec = {
    "shardloop._core.Runtime", sizeof(RuntimeObject), 0, Py_TPFLAGS_DEFAULT, runtime_slots,
};

}  // namespace

int init_runtime_type(PyObject* module) {
  PyObject* type = PyType_FromModuleAndSpec(module, &runtime_spec, nullptr);
  if (type == nullptr) return -1;
  int rc = PyModule_AddObjectRef(module, "Runtime", type);
  Py_DECREF(type);
  return rc;
}

}  // namespace shardloop::py
