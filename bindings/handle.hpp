// shardloop._core.Handle and TimerHandle: what call_soon/call_at return.
#pragma once

#include "common.hpp"
#include "shardloop/timer_heap.hpp"
#include "shardloop/work.hpp"

namespace shardloop::py {

struct LoopObject;

struct HandleObject {
  PyObject_HEAD
  LoopObject* loop;
  PyObject* callback;          // cleared by cancel()
  PyObject* args;              // tuple or nullptr when there are none
  PyObject* context;
  PyObject* source_traceback;  // debug mode only
  PyObject* repr;              // frozen by cancel() in debug mode
  PyObject* weakreflist;
  bool cancelled;
};

struct TimerHandleObject {
  HandleObject base;
  TimerNode node;
  // call_at() was given an int: asyncio's TimerHandle keeps the value it
  // was given, so when() and _when give an int back (aiohttp rounds its
  // timeouts up to whole seconds and checks that). Exact below 2**53.
  bool when_is_int;
};

extern PyTypeObject* HandleType;
extern PyTypeObject* TimerHandleType;

int init_handle_types(PyObject* module);

// A new handle (new reference). `timer` picks TimerHandle.
HandleObject* handle_new(LoopObject* loop, bool timer, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context);

// The Work that runs a handle; it owns one reference to the handle.
Work handle_work(HandleObject* handle);
// The handle a Work of handle_work() carries, else nullptr.
HandleObject* handle_of(const Work& work);

}  // namespace shardloop::py
