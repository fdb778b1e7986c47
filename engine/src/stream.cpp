// What the two backends share: opening, the write queue's bookkeeping, how
// events reach the owner, and the close path. The backends themselves are
// backend_epoll.cpp and backend_uring.cpp.
#include "shardloop/stream.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>

#include "ring.hpp"
#include "shardloop/loop.hpp"

namespace shardloop {

Stream::Stream(Loop& loop, int fd, const Callbacks& callbacks, Kind kind)
    : PolledHandle(loop), callbacks_(callbacks), fd_(fd), kind_(kind) {}

Stream::~Stream() = default;

Stream* Stream::open(Loop& loop, int fd, const Callbacks& callbacks, Kind kind) {
  if (loop.is_closed()) {
    ::close(fd);
    throw std::logic_error("Event loop is closed");
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || (!(flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)) {
    int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "fcntl");
  }
  auto* self = new (std::nothrow) Stream(loop, fd, callbacks, kind);
  if (self == nullptr) {
    ::close(fd);
    throw std::bad_alloc();
  }
  // Sockets take the ring when this thread's loop has one; pipes stay on
  // readiness (multishot recv and send need a socket).
  Ring* ring = loop.ring();
  if (ring != nullptr && kind == Kind::kSocket && Loop::current() == &loop) {
    self->ring_ = ring;
    ring->link(self);
    return self;
  }
  int rc = self->epoll_open();
  if (rc != 0) {
    delete self;  // never a libuv handle: nothing for libuv to close
    ::close(fd);
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  return self;
}

int Stream::read_start() {
  if (closed()) return UV_EBADF;
  if (reading_) return 0;
  reading_ = true;
  if (ring_) {
    if (held()) {
      // What arrived while paused goes first, from the next completion
      // pass: never from inside read_start() (the owner's resume_reading).
      if (!resume_queued_) {
        resume_queued_ = true;
        ++inflight_;
        ring_->nop(this, kResume);
      }
    } else {
      uring_arm_recv();
    }
  } else {
    epoll_watch();
  }
  return 0;
}

int Stream::read_stop() {
  if (!reading_ || closed()) return 0;
  reading_ = false;
  if (ring_)
    uring_cancel_recv();
  else
    epoll_watch();
  return 0;
}

int Stream::write(const char* data, std::size_t len) {
  if (closed()) return UV_EBADF;
  if (write_closed_ || shutdown_pending_ || write_failed_) return UV_EPIPE;
  if (len == 0) return 0;
  if (queued() == 0 && !send_inflight_) {
    // Nothing may overtake queued bytes; with none, try the kernel first,
    // on both backends: what it takes now is not "queued" to the owner
    // (asyncio's transports count only what the socket refused), and
    // bytes written after close() then behave as on asyncio's loop.
    ssize_t n;
    do n = kind_ == Kind::kSocket ? ::send(fd_, data, len, MSG_NOSIGNAL) : ::write(fd_, data, len);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
      if (static_cast<std::size_t>(n) == len) return 0;
      data += n;
      len -= static_cast<std::size_t>(n);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) {
      return -errno;
    }
    sending_.clear();
    sent_ = 0;
  } else if (!ring_) {
    compact();
  }
  try {
    // io_uring: the buffer of a send in flight stays put; later bytes
    // collect in out_ and leave together as the next send.
    (ring_ ? out_ : sending_).append(data, len);
  } catch (const std::bad_alloc&) {
    return UV_ENOMEM;
  }
  if (ring_)
    ring_->mark_dirty(this);
  else
    epoll_watch();
  return 0;
}

// Drops what was sent once it is at least half the buffer: each queued
// byte is moved at most once more.
void Stream::compact() noexcept {
  if (sent_ != 0 && sent_ >= sending_.size() / 2) {
    sending_.erase(0, sent_);
    sent_ = 0;
  }
}

int Stream::shutdown() {
  if (closed()) return UV_EBADF;
  if (write_closed_ || shutdown_pending_) return UV_EPIPE;
  if (queued() == 0 && !send_inflight_) {
    // Nothing queued: the FIN goes now, as asyncio's write_eof() calls
    // shutdown() at once, and a failure (ENOTCONN after the peer's reset) is
    // the caller's to hear, as there; on_shutdown is then not called.
    if (::shutdown(fd_, SHUT_WR) != 0) {
      const int err = -errno;
      write_closed_ = true;
      return err;
    }
    shutdown_pending_ = true;
    shutdown_sent_ = true;
    shutdown_status_ = 0;
    // The owner still hears of it from a completion or the writable
    // callback, never from inside shutdown().
    if (ring_) {
      ring_->nop(this, kShutdown);
      ++inflight_;
    } else {
      epoll_watch();
    }
    return 0;
  }
  // Otherwise the queue is sent first: the writable callback (epoll) or the
  // last send's completion (io_uring) shuts down.
  shutdown_pending_ = true;
  if (!ring_) epoll_watch();
  return 0;
}

void Stream::deliver(const char* data, ssize_t n) noexcept {
  if (n < 0) reading_ = false;  // EOF and errors end reading, as libuv's streams do
  callbacks_.on_read(callbacks_.ctx, data, n);
}

void Stream::report_write(int status) noexcept {
  if (status < 0) write_failed_ = true;
  if (callbacks_.on_write) callbacks_.on_write(callbacks_.ctx, status, queued());
}

void Stream::finish_shutdown(int status) noexcept {
  shutdown_pending_ = false;
  shutdown_sent_ = false;
  write_closed_ = true;
  if (callbacks_.on_shutdown) callbacks_.on_shutdown(callbacks_.ctx, status);
}

// However it closes (close(), an error, the loop closing), the owner hears
// of it first, while the fd is still ours: a handler that opens a new fd
// cannot get this number and lose it to the deregistration that follows.
void Stream::on_close() noexcept {
  reading_ = false;
  if (callbacks_.on_close) callbacks_.on_close(callbacks_.ctx);
}

void Stream::close_handle() noexcept {
  if (ring_) {
    uring_close();
    return;
  }
  close_poll();  // out of epoll now, then the fd goes
  ::close(fd_);
  fd_ = -1;
}

}  // namespace shardloop
