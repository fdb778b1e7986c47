// shardloop._core.Loop: the native base of shardloop.Loop.
#pragma once

#include "common.hpp"
#include "loop_upcalls.hpp"
#include "shardloop/loop.hpp"

namespace shardloop::py {

struct HandleObject;
struct FdWatches;
struct SockOps;

struct LoopObject {
  PyObject_HEAD
  Loop* engine;
  PyObject* pending_exception;  // KeyboardInterrupt/SystemExit leaving _run()
  PyObject* task_factory;
  FdWatches* fd_watches;
  SockOps* sock_ops;  // the sock_* calls waiting for their socket
  // {fd: weakref(transport)} for the fds transports own (`_fd_transports`,
  // kept by the Python layer): asyncio refuses watches and sock_* waits on
  // them. Native so a sock_* wait can see at no cost that it is empty.
  PyObject* fd_transports;
  PyThreadState* waiting_tstate;
  unsigned long thread_id;      // owner thread while running, else 0
  double slow_callback_duration;
  PyObject* upcalls[kUpcallCount];  // see loop_upcalls.hpp
  bool debug;
  // type(self).time is not _core.Loop.time (a subclass overrides it).
  bool time_overridden;
  // Set (under the loop's critical section) when close() has decided to
  // close: from then on the loop counts as closed, so a run that another
  // thread starts while close() runs finalizers is refused, as in asyncio.
  bool closing;
#ifdef Py_GIL_DISABLED
  // The thread inside _run(), else 0; written under a critical section on
  // the loop. Without a GIL, only that thread may touch the engine's ready
  // queue and timer heap; others go through the inbox (loop_owns_queues).
  unsigned long running_thread;
#endif
};

#ifdef Py_GIL_DISABLED
// True on the thread running the loop. Elsewhere, callers decide under a
// critical section on the loop whether it runs (then: the inbox).
inline bool loop_owns_queues(LoopObject* loop) {
  return __atomic_load_n(&loop->running_thread, __ATOMIC_RELAXED) == PyThread_get_thread_ident();
}
#endif

extern PyTypeObject* LoopType;

int init_loop_type(PyObject* module);
int init_stream_type(PyObject* module);
int init_datagram_type(PyObject* module);
// _core._set_asyncio_types(Future, Task): the classes create_future/create_task make.
PyObject* set_asyncio_types(PyObject* module, PyObject* args);

// Stops the current run with the exception being raised (it must be one that
// propagates out of run_forever).
void loop_abort_with_exception(LoopObject* loop);
// Hands the exception being raised to loop.call_exception_handler.
void loop_report_callback_error(LoopObject* loop, HandleObject* handle);
// TypeError (asyncio's message) unless `callback` is callable and not a
// coroutine object (nor, unless allowed, a coroutine function).
bool check_callable(PyObject* callback, const char* method, bool allow_coroutine_function);
// Debug mode: logs a callback slower than slow_callback_duration.
void loop_log_slow_callback(LoopObject* loop, HandleObject* handle, double seconds);
// A new asyncio future bound to `loop` (create_future()).
PyObject* loop_new_future(LoopObject* loop);
// loop_io_backend.cpp
PyObject* loop_set_io_backend(LoopObject* self, PyObject* mode);
PyObject* loop_get_io_backend(LoopObject* self, void*);

}  // namespace shardloop::py
