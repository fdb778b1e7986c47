// An OwnedHandle whose fd a libuv poll handle watches, and whose readiness
// joins the loop's iteration through the loop's I/O queue (Loop::call_io):
// asyncio runs a transport's read and write handlers as ready-queue
// entries, after the callbacks that were ready before the poll and before
// the due timers, once per poll. Stream (epoll backend) and Datagram are
// built on it.
#pragma once

#include <uv.h>

#include "shardloop/owned_handle.hpp"

namespace shardloop {

class PolledHandle : public OwnedHandle {
 protected:
  explicit PolledHandle(Loop& loop) : OwnedHandle(loop) {}
  ~PolledHandle() override = default;
  uv_handle_t* uv_handle() noexcept override { return reinterpret_cast<uv_handle_t*>(&poll_); }

  // What libuv reported since the last run (status < 0: libuv stopped the
  // handle on EPOLLERR), from the loop's queue, with the embedder resumed.
  virtual void handle_poll_events(int status, int events) noexcept = 0;

  // 0 or a libuv error.
  int poll_init(int fd) noexcept;
  // Starts watching `events` (0 stops); 0 or a libuv error.
  int poll_watch(int events) noexcept;
  // A run with `events` from the ready queue, as if libuv had reported
  // them (from outside libuv's callbacks: Loop::call_io is for those).
  void queue_events(int events) noexcept;
  // Gives the poll handle back to libuv: the memory goes (handle_closed)
  // once libuv is done and no run is left in the loop's queues.
  void close_poll() noexcept;

  uv_poll_t poll_{};

 private:
  static void on_poll(uv_poll_t* handle, int status, int events);
  static void run_poll_events(void* ctx, bool run) noexcept;

  int polled_events_ = 0;  // reported by libuv, handled from the loop's queue
  int polled_status_ = 0;
  bool poll_queued_ = false;    // run_poll_events is in one of the loop's queues
  bool uv_close_done_ = false;  // libuv closed the handle while poll_queued_
};

}  // namespace shardloop
