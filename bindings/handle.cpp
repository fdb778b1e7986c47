#include "handle.hpp"

#include <structmember.h>

#include "loop_object.hpp"
#include "shardloop/clock.hpp"

namespace shardloop::py {

PyTypeObject* HandleType = nullptr;
PyTypeObject* TimerHandleType = nullptr;

namespace {

// Handles are allocated and freed once per callback; recycling them skips
// the allocator and the GC's allocation count (which triggers collections).
// With the GIL disabled a global list would need a lock, and under ASan it
// would hide use-after-free, so it is off there.
//
// The list is not bounded by a small count: call_soon_threadsafe's producer
// makes every handle of its GIL interval (tens of thousands) before the
// loop frees one, and with only a few hundred kept the rest went back to
// pymalloc, whose emptied arenas went back to the kernel and came back as
// fresh pages (page faults) on the next burst. What a burst leaves here
// stays while it is used again; what goes unused for a second beyond the
// first kKeep is freed when a loop next goes to sleep (trim()). Timer
// handles keep the old bound: a larger one did not change call_later's
// throughput (its timers wait on the heap, not in a burst).
#if !defined(Py_GIL_DISABLED) && !defined(__SANITIZE_ADDRESS__)
#define SHARDLOOP_FREELIST 1
#endif
template <typename T, std::size_t kMax>
struct FreeList {
  // Always kept; kMax is the most ever kept.
  static constexpr std::size_t kKeep = kMax < 256 ? kMax : 256;
  // Linked through the dead objects' `callback` field.
  HandleObject* head = nullptr;
  std::size_t size = 0;
  // The fewest kept since the last trim(): that many went unused meanwhile.
  std::size_t low = 0;
  double last_trim = 0.0;

  static HandleObject*& next(HandleObject* obj) { return *reinterpret_cast<HandleObject**>(&obj->callback); }

  T* take(PyTypeObject* type) {
#ifdef SHARDLOOP_FREELIST
    if (head != nullptr) {
      HandleObject* obj = head;
      head = next(obj);
      if (--size < low) low = size;
      PyObject_Init(reinterpret_cast<PyObject*>(obj), type);
      return reinterpret_cast<T*>(obj);
    }
#endif
    return PyObject_GC_New(T, type);
  }

  bool give(T* obj) {
#ifdef SHARDLOOP_FREELIST
    if (size < kMax) {
      auto* h = reinterpret_cast<HandleObject*>(obj);
      next(h) = head;
      head = h;
      ++size;
      return true;
    }
#endif
    (void)obj;
    return false;
  }

  // Frees what stayed unused (beyond kKeep) since the last trim, once a
  // second at most.
  void trim(double now) {
    if (size <= kKeep || now - last_trim < 1.0) return;
    std::size_t excess = low > kKeep ? low - kKeep : 0;
    for (; excess != 0; --excess) {
      HandleObject* obj = head;
      head = next(obj);
      --size;
      PyObject_GC_Del(obj);
    }
    low = size;
    last_trim = now;
  }
};
// At most 6 MiB of plain handles (96 bytes each with the GC header).
FreeList<HandleObject, std::size_t{1} << 16> handle_freelist;
FreeList<TimerHandleObject, 256> timer_freelist;

void handle_clear_call(HandleObject* self) {
  Py_CLEAR(self->callback);
  Py_CLEAR(self->args);
}

// cancel() may come from another thread (call_soon_threadsafe's handle).
// Without a GIL the callback and its arguments are swapped out and read
// under the handle's critical section, so neither side frees what the
// other is about to use; on GIL builds the section is plain braces.
void handle_drop_call(HandleObject* self) {
  PyObject *callback, *args;
  Py_BEGIN_CRITICAL_SECTION(self);
  callback = self->callback;
  args = self->args;
  self->callback = self->args = nullptr;
  Py_END_CRITICAL_SECTION();
  Py_XDECREF(callback);
  Py_XDECREF(args);
}

// New references to what to call, or false once cancelled.
bool handle_take_call(HandleObject* self, PyObject** callback, PyObject** args) {
  bool live;
  Py_BEGIN_CRITICAL_SECTION(self);
  live = !self->cancelled && self->callback != nullptr;
  if (live) {
    *callback = Py_NewRef(self->callback);
    *args = Py_XNewRef(self->args);
  }
  Py_END_CRITICAL_SECTION();
  return live;
}

// Returns true with KeyboardInterrupt/SystemExit still raised: the caller
// decides where it goes (the loop's run, or Handle._run()'s caller).
bool handle_execute(HandleObject* self) {
  LoopObject* loop = self->loop;
  // cancel() from inside the callback clears these; the call keeps its own.
  PyObject *callback, *args;
  if (!handle_take_call(self, &callback, &args)) return false;
  PyObject* const* argv = args ? &PyTuple_GET_ITEM(args, 0) : nullptr;
  Py_ssize_t nargs = args ? PyTuple_GET_SIZE(args) : 0;
  const double start = loop->debug ? monotonic_now() : 0.0;

  PyObject* result = nullptr;
  if (PyContext_Enter(self->context) == 0) {
    result = PyObject_Vectorcall(callback, argv, nargs, nullptr);
    PyObject* exc = result ? nullptr : fetch_exception();
    PyContext_Exit(self->context);
    if (exc) restore_exception(exc);
  }
  Py_DECREF(callback);
  Py_XDECREF(args);
  if (result) {
    Py_DECREF(result);
  } else if (exception_must_propagate()) {
    return true;
  } else {
    loop_report_callback_error(loop, self);
  }
  // start == 0: debug mode was switched on by this very callback.
  if (loop->debug && start != 0.0) {
    double elapsed = monotonic_now() - start;
    if (elapsed >= loop->slow_callback_duration) loop_log_slow_callback(loop, self, elapsed);
  }
  return false;
}

void run_handle_work(void* ctx, bool run) noexcept {
  auto* self = static_cast<HandleObject*>(ctx);
  if (run && handle_execute(self)) loop_abort_with_exception(self->loop);
  Py_DECREF(self);
}

int handle_traverse(HandleObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  Py_VISIT(self->loop);
  Py_VISIT(self->callback);
  Py_VISIT(self->args);
  Py_VISIT(self->context);
  Py_VISIT(self->debug);
  return 0;
}

int handle_clear(HandleObject* self) {
  // The loop stays: a queued handle may still be run or discarded by it.
  handle_clear_call(self);
  Py_CLEAR(self->context);
  Py_CLEAR(self->debug);
  return 0;
}

void handle_dealloc(HandleObject* self) {
  PyTypeObject* type = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  if (self->weakreflist) PyObject_ClearWeakRefs(reinterpret_cast<PyObject*>(self));
  handle_clear(self);
  Py_CLEAR(self->loop);
  bool kept = false;
  if (type == HandleType) {
    kept = handle_freelist.give(self);
  } else if (type == TimerHandleType) {
    kept = timer_freelist.give(reinterpret_cast<TimerHandleObject*>(self));
  }
  if (!kept) type->tp_free(self);
  Py_DECREF(type);
}

enum DebugItem : Py_ssize_t { kSourceTraceback = 0, kFrozenRepr = 1 };

// Borrowed; None when not known (or not in debug mode).
PyObject* debug_item(HandleObject* self, DebugItem item) {
  return self->debug ? PyList_GET_ITEM(self->debug, item) : Py_None;
}

// Steals `value`; -1 with an exception set on failure.
int set_debug_item(HandleObject* self, DebugItem item, PyObject* value) {
  if (self->debug == nullptr) {
    self->debug = PyList_New(2);
    if (self->debug == nullptr) {
      Py_DECREF(value);
      return -1;
    }
    PyList_SET_ITEM(self->debug, kSourceTraceback, Py_NewRef(Py_None));
    PyList_SET_ITEM(self->debug, kFrozenRepr, Py_NewRef(Py_None));
  }
  return PyList_SetItem(self->debug, item, value);
}

PyObject* handle_repr(HandleObject* self) {
  PyObject* frozen = debug_item(self, kFrozenRepr);
  if (frozen != Py_None) return Py_NewRef(frozen);
  PyObject* arg = reinterpret_cast<PyObject*>(self);
  return upcall(self->loop, Upcall::handle_repr, &arg, 1);
}

// Takes a cancelled timer off the heap and drops the heap's reference.
// Free-threaded: while the loop runs on another thread the heap is that
// thread's alone, so the timer stays there and is skipped when due.
void unschedule(TimerHandleObject* timer) {
  LoopObject* loop = timer->base.loop;
  bool removed = false;
#ifdef Py_GIL_DISABLED
  if (!loop_owns_queues(loop)) {
    Py_BEGIN_CRITICAL_SECTION(loop);
    if (loop->running_thread == 0 && timer->node.scheduled()) {
      loop->engine->cancel(&timer->node);
      removed = true;
    }
    Py_END_CRITICAL_SECTION();
    if (removed) Py_DECREF(timer);
    return;
  }
#endif
  if (timer->node.scheduled()) {
    loop->engine->cancel(&timer->node);
    removed = true;
  }
  if (removed) Py_DECREF(timer);  // the caller still holds one
}

PyObject* handle_cancel(HandleObject* self, PyObject*) {
  bool was_cancelled;
  Py_BEGIN_CRITICAL_SECTION(self);
  was_cancelled = self->cancelled;
  self->cancelled = true;
  Py_END_CRITICAL_SECTION();
  if (was_cancelled) Py_RETURN_NONE;
  if (self->loop->debug && debug_item(self, kFrozenRepr) == Py_None) {
    // Keep what it was for the repr: the callback is about to be dropped.
    PyObject* repr = handle_repr(self);
    if (repr == nullptr || set_debug_item(self, kFrozenRepr, repr) < 0) return nullptr;
  }
  if (Py_IS_TYPE(self, TimerHandleType) || PyObject_TypeCheck(self, TimerHandleType)) {
    unschedule(reinterpret_cast<TimerHandleObject*>(self));
  }
  handle_drop_call(self);
  Py_RETURN_NONE;
}

PyObject* handle_cancelled(HandleObject* self, PyObject*) { return PyBool_FromLong(self->cancelled); }

PyObject* handle_get_context(HandleObject* self, PyObject*) { return Py_NewRef(self->context); }

// Called by hand (asyncio's Handle._run): KeyboardInterrupt and SystemExit
// go to the caller, as in asyncio, and never through the loop's abort flag
// (which would end a run the caller may have meant to go on).
PyObject* handle_run(HandleObject* self, PyObject*) {
  if (handle_execute(self)) return nullptr;
  Py_RETURN_NONE;
}

PyObject* get_args(HandleObject* self, void*) {
  PyObject* args;
  bool called;
  Py_BEGIN_CRITICAL_SECTION(self);
  args = Py_XNewRef(self->args);
  called = self->callback != nullptr;
  Py_END_CRITICAL_SECTION();
  if (args) return args;
  if (!called) Py_RETURN_NONE;
  return PyTuple_New(0);
}

PyObject* get_callback(HandleObject* self, void*) {
  PyObject* callback;
  Py_BEGIN_CRITICAL_SECTION(self);
  callback = Py_NewRef(self->callback ? self->callback : Py_None);
  Py_END_CRITICAL_SECTION();
  return callback;
}

PyObject* get_source_traceback(HandleObject* self, void*) {
  return Py_NewRef(debug_item(self, kSourceTraceback));
}

PyMethodDef handle_methods[] = {
    {"cancel", reinterpret_cast<PyCFunction>(handle_cancel), METH_NOARGS, nullptr},
    {"cancelled", reinterpret_cast<PyCFunction>(handle_cancelled), METH_NOARGS, nullptr},
    {"get_context", reinterpret_cast<PyCFunction>(handle_get_context), METH_NOARGS, nullptr},
    {"_run", reinterpret_cast<PyCFunction>(handle_run), METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyMemberDef handle_members[] = {
    {"_loop", T_OBJECT, offsetof(HandleObject, loop), READONLY, nullptr},
    {"_context", T_OBJECT, offsetof(HandleObject, context), READONLY, nullptr},
    {"_cancelled", T_BOOL, offsetof(HandleObject, cancelled), READONLY, nullptr},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HandleObject, weakreflist), READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr},
};

PyGetSetDef handle_getset[] = {
    {"_callback", reinterpret_cast<getter>(get_callback), nullptr, nullptr, nullptr},
    {"_args", reinterpret_cast<getter>(get_args), nullptr, nullptr, nullptr},
    {"_source_traceback", reinterpret_cast<getter>(get_source_traceback), nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot handle_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(handle_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(handle_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(handle_clear)},
    {Py_tp_repr, reinterpret_cast<void*>(handle_repr)},
    {Py_tp_methods, handle_methods},
    {Py_tp_members, handle_members},
    {Py_tp_getset, handle_getset},
    {Py_tp_doc, const_cast<char*>("Object returned by callback registration methods.")},
    {0, nullptr},
};

PyType_Spec handle_spec = {
    "shardloop._core.Handle", sizeof(HandleObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, handle_slots,
};

// --- TimerHandle -----------------------------------------------------------

double when_of(PyObject* self) { return reinterpret_cast<TimerHandleObject*>(self)->node.when; }

PyObject* timer_when(PyObject* self, PyObject*) {
  if (reinterpret_cast<HandleObject*>(self)->when_is_int) return PyLong_FromDouble(when_of(self));
  return PyFloat_FromDouble(when_of(self));
}

PyObject* timer_get_when(PyObject* self, void*) { return timer_when(self, nullptr); }

PyObject* timer_get_scheduled(PyObject* self, void*) {
  return PyBool_FromLong(reinterpret_cast<TimerHandleObject*>(self)->node.scheduled());
}

PyObject* timer_richcompare(PyObject* self, PyObject* other, int op) {
  if (!PyObject_TypeCheck(other, TimerHandleType)) Py_RETURN_NOTIMPLEMENTED;
  double a = when_of(self), b = when_of(other);
  if (op == Py_EQ || op == Py_NE) {
    auto* x = reinterpret_cast<HandleObject*>(self);
    auto* y = reinterpret_cast<HandleObject*>(other);
    bool eq = self == other;
    if (!eq && a == b && x->cancelled == y->cancelled && x->callback == y->callback) {
      int r = PyObject_RichCompareBool(x->args ? x->args : Py_None, y->args ? y->args : Py_None, Py_EQ);
      if (r < 0) return nullptr;
      eq = r;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
  }
  Py_RETURN_RICHCOMPARE(a, b, op);
}

Py_hash_t timer_hash(PyObject* self) {
  PyObject* when = PyFloat_FromDouble(when_of(self));
  if (when == nullptr) return -1;
  Py_hash_t h = PyObject_Hash(when);
  Py_DECREF(when);
  return h;
}

PyMethodDef timer_methods[] = {
    {"when", timer_when, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef timer_getset[] = {
    {"_scheduled", timer_get_scheduled, nullptr, nullptr, nullptr},
    {"_when", timer_get_when, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyMemberDef timer_members[] = {
    {nullptr, 0, 0, 0, nullptr},
};

PyType_Slot timer_slots[] = {
    {Py_tp_traverse, reinterpret_cast<void*>(handle_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(handle_clear)},
    {Py_tp_richcompare, reinterpret_cast<void*>(timer_richcompare)},
    {Py_tp_hash, reinterpret_cast<void*>(timer_hash)},
    {Py_tp_methods, timer_methods},
    {Py_tp_getset, timer_getset},
    {Py_tp_members, timer_members},
    {Py_tp_doc, const_cast<char*>("Object returned by timed callback registration methods.")},
    {0, nullptr},
};

PyType_Spec timer_spec = {
    "shardloop._core.TimerHandle", sizeof(TimerHandleObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, timer_slots,
};

}  // namespace

HandleObject* handle_new(LoopObject* loop, bool timer, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context) {
  PyObject* ctx;
  if (context == nullptr || context == Py_None) {
    ctx = PyContext_CopyCurrent();
    if (ctx == nullptr) return nullptr;
  } else if (PyContext_CheckExact(context)) {
    ctx = Py_NewRef(context);
  } else {
    PyErr_Format(PyExc_TypeError, "an instance of Context was expected, got %.200s",
                 Py_TYPE(context)->tp_name);
    return nullptr;
  }
  PyObject* tuple = nullptr;
  if (nargs > 0) {
    tuple = PyTuple_New(nargs);
    if (tuple == nullptr) {
      Py_DECREF(ctx);
      return nullptr;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
  }
  HandleObject* self;
  if (timer) {
    auto* t = timer_freelist.take(TimerHandleType);
    if (t) new (&t->node) TimerNode();
    self = reinterpret_cast<HandleObject*>(t);
  } else {
    self = handle_freelist.take(HandleType);
  }
  if (self == nullptr) {
    Py_DECREF(ctx);
    Py_XDECREF(tuple);
    return nullptr;
  }
  self->loop = reinterpret_cast<LoopObject*>(Py_NewRef(reinterpret_cast<PyObject*>(loop)));
  self->callback = Py_NewRef(callback);
  self->args = tuple;
  self->context = ctx;
  self->debug = nullptr;
  self->weakreflist = nullptr;
  self->cancelled = false;
  self->when_is_int = false;
  if (loop->debug) {
    PyObject* stack = upcall(loop, Upcall::extract_stack);
    if (stack == nullptr || set_debug_item(self, kSourceTraceback, stack) < 0) {
      Py_DECREF(self);
      return nullptr;
    }
  }
  PyObject_GC_Track(self);
  return self;
}

Work handle_work(HandleObject* handle) { return Work{&run_handle_work, handle}; }

void handle_freelist_trim() {
#ifdef SHARDLOOP_FREELIST
  if (handle_freelist.size > handle_freelist.kKeep) handle_freelist.trim(monotonic_now());
#endif
}

HandleObject* handle_of(const Work& work) {
  return work.fn == &run_handle_work ? static_cast<HandleObject*>(work.ctx) : nullptr;
}

int init_handle_types(PyObject* module) {
  if (add_type(module, handle_spec, HandleType) < 0) return -1;
  return add_type(module, timer_spec, TimerHandleType, reinterpret_cast<PyObject*>(HandleType));
}

}  // namespace shardloop::py
