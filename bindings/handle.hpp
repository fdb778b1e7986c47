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
  // Debug mode only: [source traceback, repr frozen by cancel()], each None
  // until known. One pointer for the two keeps a TimerHandle within
  // pymalloc's 128-byte class (144 with two).
  PyObject* debug;
  PyObject* weakreflist;
  bool cancelled;
  // TimerHandle only (kept here, in the padding after `cancelled`, so a
  // timer handle is 8 bytes smaller): call_at() was given an int, and
  // asyncio's TimerHandle keeps the value it was given, so when() and _when
  // give an int back (aiohttp rounds its timeouts up to whole seconds and
  // checks that). Exact below 2**53.
  bool when_is_int;
};

struct TimerHandleObject {
  HandleObject base;
  TimerNode node;
};

extern PyTypeObject* HandleType;
extern PyTypeObject* TimerHandleType;

int init_handle_types(PyObject* module);

// A new handle (new reference). `timer` picks TimerHandle.
HandleObject* handle_new(LoopObject* loop, bool timer, PyObject* callback, PyObject* const* args,
                         Py_ssize_t nargs, PyObject* context);

// Loop thread, with the GIL, before the loop sleeps: frees the recycled
// plain handles that went unused for a second (FreeList in handle.cpp).
void handle_freelist_trim();

// The Work that runs a handle; it owns one reference to the handle.
Work handle_work(HandleObject* handle);
// The handle a Work of handle_work() carries, else nullptr.
HandleObject* handle_of(const Work& work);

}  // namespace shardloop::py
