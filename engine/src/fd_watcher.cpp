#include "shardloop/fd_watcher.hpp"

#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

FdWatcher::FdWatcher(Loop& loop, int fd, Callback callback, void* ctx)
    : OwnedHandle(loop), callback_(callback), ctx_(ctx), fd_(fd) {}

FdWatcher* FdWatcher::open(Loop& loop, int fd, Callback callback, void* ctx) {
  if (loop.is_closed()) throw std::logic_error("Event loop is closed");
  auto* self = new FdWatcher(loop, fd, callback, ctx);
  int rc = uv_poll_init(loop.uv(), &self->poll_, fd);
  if (rc != 0) {
    delete self;
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  self->poll_.data = self;
  return self;
}

void FdWatcher::watch(int events) {
  if (closed_) return;
  int rc = events ? uv_poll_start(&poll_, events, &FdWatcher::on_poll) : uv_poll_stop(&poll_);
  if (rc != 0) throw std::system_error(-rc, std::generic_category(), "uv_poll_start");
  events_ = events;
}

void FdWatcher::on_poll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<FdWatcher*>(handle->data);
  if (self->closed_) return;
  self->loop_.resume();
  self->callback_(self->ctx_, status < 0 ? self->events_ : (events & self->events_));
}

void FdWatcher::close() noexcept {
  if (closed_) return;
  closed_ = true;
  detach();
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* handle) {
    auto* self = static_cast<FdWatcher*>(handle->data);
    self->uv_closed_ = true;
    self->maybe_delete();
  });
}

void FdWatcher::release() noexcept {
  close();
  released_ = true;
  maybe_delete();
}

void FdWatcher::maybe_delete() noexcept {
  if (uv_closed_ && released_) delete this;
}

}  // namespace shardloop
