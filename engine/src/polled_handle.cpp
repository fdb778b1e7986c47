#include "shardloop/polled_handle.hpp"

#include <utility>

#include "shardloop/loop.hpp"

namespace shardloop {

int PolledHandle::poll_init(int fd) noexcept {
  int rc = uv_poll_init(loop_.uv(), &poll_, fd);
  if (rc == 0) poll_.data = this;
  return rc;
}

int PolledHandle::poll_watch(int events) noexcept {
  return events ? uv_poll_start(&poll_, events, &PolledHandle::on_poll) : uv_poll_stop(&poll_);
}

void PolledHandle::on_poll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<PolledHandle*>(handle->data);
  if (self->closed()) return;
  if (status < 0) self->polled_status_ = status;
  self->polled_events_ |= events;
  if (self->poll_queued_) return;
  try {
    self->loop_.call_io(Work{&PolledHandle::run_poll_events, self});
    self->poll_queued_ = true;
  } catch (...) {
    // No room in the queue: handled now, as before the queue existed.
    self->loop_.resume();
    self->handle_poll_events(std::exchange(self->polled_status_, 0), std::exchange(self->polled_events_, 0));
  }
}

void PolledHandle::queue_events(int events) noexcept {
  polled_events_ |= events;
  if (poll_queued_) return;
  try {
    loop_.call_soon(Work{&PolledHandle::run_poll_events, this});
    poll_queued_ = true;
  } catch (...) {
    // The events wait for libuv's next report instead.
  }
}

// The memory outlives a queued entry: libuv's close callback leaves the
// release to this entry when it is still queued (close_poll).
void PolledHandle::run_poll_events(void* ctx, bool run) noexcept {
  auto* self = static_cast<PolledHandle*>(ctx);
  self->poll_queued_ = false;
  const int status = std::exchange(self->polled_status_, 0);
  const int events = std::exchange(self->polled_events_, 0);
  if (self->uv_close_done_) return self->handle_closed();  // may free it
  if (!run || self->closed()) return;
  self->loop_.resume();
  self->handle_poll_events(status, events);
}

// uv_close: out of epoll now. An entry still in the loop's queues points
// here: it releases the memory when it runs (or is discarded).
void PolledHandle::close_poll() noexcept {
  poll_.data = this;
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) {
    auto* self = static_cast<PolledHandle*>(h->data);
    if (self->poll_queued_) {
      self->uv_close_done_ = true;
    } else {
      self->handle_closed();
    }
  });
}

}  // namespace shardloop
