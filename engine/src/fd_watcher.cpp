#include "shardloop/fd_watcher.hpp"

#include <fcntl.h>

#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

FdWatcher::FdWatcher(Loop& loop, int fd, Callback callback, void* ctx)
    : OwnedHandle(loop), callback_(callback), ctx_(ctx), fd_(fd) {}

FdWatcher* FdWatcher::open(Loop& loop, int fd, Callback callback, void* ctx) {
  if (loop.is_closed()) throw std::logic_error("Event loop is closed");
  auto* self = new FdWatcher(loop, fd, callback, ctx);
  // libuv makes the fd non-blocking; watching readiness must not change
  // how the owner's own reads and writes behave, so put the flag back.
  const int flags = ::fcntl(fd, F_GETFL);
  int rc = uv_poll_init(loop.uv(), &self->poll_, fd);
  if (rc == 0 && flags != -1 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags);
  if (rc != 0) {
    delete self;
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  self->poll_.data = self;
  return self;
}

void FdWatcher::watch(int events) {
  if (closed()) return;
  int rc = events ? uv_poll_start(&poll_, events, &FdWatcher::on_poll) : uv_poll_stop(&poll_);
  if (rc != 0) throw std::system_error(-rc, std::generic_category(), "uv_poll_start");
  events_ = events;
}

void FdWatcher::on_poll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<FdWatcher*>(handle->data);
  if (self->closed()) return;
  self->loop_.resume();
  self->callback_(self->ctx_, status < 0 ? self->events_ : (events & self->events_));
}

}  // namespace shardloop
