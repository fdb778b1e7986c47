#include "shardloop/fd_watcher.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

FdWatcher::FdWatcher(Loop& loop, int fd, Callback callback, void* ctx)
    : OwnedHandle(loop), callback_(callback), ctx_(ctx), fd_(fd) {}

FdWatcher* FdWatcher::open(Loop& loop, int fd, Callback callback, void* ctx, bool duplicate) {
  if (loop.is_closed()) throw std::logic_error("Event loop is closed");
  int poll_fd = duplicate ? ::fcntl(fd, F_DUPFD_CLOEXEC, 0) : fd;
  const bool own_dup = duplicate && poll_fd >= 0;
  if (duplicate && !own_dup) {
    if (errno != EMFILE && errno != ENFILE) throw std::system_error(errno, std::generic_category(), "dup");
    poll_fd = fd;
  }
  // libuv makes the fd non-blocking (a flag the duplicate shares with the
  // owner's fd); watching readiness must not change how the owner's own
  // reads and writes behave, so put the flag back.
  const int flags = ::fcntl(fd, F_GETFL);
  auto* self = new FdWatcher(loop, fd, callback, ctx);
  int rc = uv_poll_init(loop.uv(), &self->poll_, poll_fd);
  if (flags != -1 && !(flags & O_NONBLOCK)) ::fcntl(fd, F_SETFL, flags);
  if (rc != 0) {
    if (own_dup) ::close(poll_fd);
    delete self;
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  self->poll_fd_ = own_dup ? poll_fd : -1;
  self->poll_.data = self;
  return self;
}

void FdWatcher::on_close() noexcept {
  // Out of epoll before the duplicate goes.
  uv_poll_stop(&poll_);
  if (poll_fd_ >= 0) ::close(poll_fd_);
  poll_fd_ = -1;
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
  if (status < 0) {
    // libuv stops a poll handle on EPOLLERR; a selector keeps reporting
    // the fd every iteration until it is unregistered, so re-arm.
    uv_poll_start(&self->poll_, self->events_, &FdWatcher::on_poll);
    self->callback_(self->ctx_, self->events_);
    return;
  }
  self->callback_(self->ctx_, events & self->events_);
}

}  // namespace shardloop
