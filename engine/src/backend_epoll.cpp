// The readiness backend of Stream: a libuv poll handle (epoll) says when
// the socket can be read or written; the reads and sends are made here,
// because libuv's stream layer costs more instructions per request than an
// echo itself (callgrind, perf/native/instructions.py).
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>

#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"

namespace shardloop {

namespace {

// A full buffer means more may be waiting: read again rather than go back
// to epoll for it, but not forever, so one busy peer cannot starve the rest.
constexpr int kReadsPerWake = 16;

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

}  // namespace

int Stream::epoll_open() { return poll_init(fd_); }

// Asks libuv for exactly the events there is something to do for.
void Stream::epoll_watch() noexcept {
  if (closed()) return;
  const bool want_write = !write_failed_ && (queued() != 0 || shutdown_pending_);
  int events = (reading_ ? UV_READABLE | UV_DISCONNECT : 0) | (want_write ? UV_WRITABLE : 0);
  if (events == watching_) return;
  int rc = poll_watch(events);
  if (rc != 0) {
    // Only a bad fd gets here; say so where the owner listens.
    if (reading_) return deliver(nullptr, rc);
    return report_write(rc);
  }
  watching_ = events;
}

// Sends what the kernel takes; once the queue is empty, a pending shutdown
// happens. 0, or the negative errno that failed.
int Stream::epoll_flush() noexcept {
  while (sent_ < sending_.size()) {
    const char* p = sending_.data() + sent_;
    const std::size_t len = sending_.size() - sent_;
    ssize_t n = kind_ == Kind::kSocket ? ::send(fd_, p, len, MSG_NOSIGNAL) : ::write(fd_, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return would_block(errno) || errno == ENOBUFS ? 0 : -errno;
    }
    sent_ += static_cast<std::size_t>(n);
  }
  sending_.clear();
  sent_ = 0;
  return 0;
}

// Readiness, from the loop's I/O queue (PolledHandle).
void Stream::handle_poll_events(int status, int events) noexcept {
  if (status < 0) return epoll_poll_error();
  if (events & (UV_READABLE | UV_DISCONNECT)) epoll_readable(events & UV_DISCONNECT);
  if (!(events & UV_WRITABLE) || closed()) return;
  const std::size_t before = queued();
  int rc = epoll_flush();
  if (rc != 0) {
    watching_ = -1;  // re-evaluated below
    report_write(rc);
    if (!closed()) epoll_watch();
    return;
  }
  // Progress first (an owner closing after its queue drains waits for
  // queued == 0), then a pending shutdown, as on the ring.
  if (queued() != before) report_write(0);
  if (closed()) return;
  if (queued() == 0 && shutdown_pending_) {
    int sr = shutdown_sent_ ? shutdown_status_ : (::shutdown(fd_, SHUT_WR) == 0 ? 0 : -errno);
    finish_shutdown(sr);
    if (closed()) return;
  }
  epoll_watch();
}

// `hangup`: the peer has shut down its side, so a short read is followed
// by the EOF now rather than after another trip through epoll (as libuv's
// streams do: data and EOF found by one poll reach the owner together).
void Stream::epoll_readable(bool hangup) noexcept {
  char* buf;
  try {
    buf = loop_.read_buffer();
  } catch (const std::bad_alloc&) {
    return deliver(nullptr, UV_ENOBUFS);
  }
  for (int i = 0; i < kReadsPerWake && reading_ && !closed(); ++i) {
    ssize_t n = ::read(fd_, buf, Loop::kReadBufferSize);
    if (n > 0) {
      deliver(buf, n);
      if (static_cast<std::size_t>(n) < Loop::kReadBufferSize && !hangup) return;
    } else if (n == 0) {
      deliver(nullptr, UV_EOF);
      epoll_watch();
      return;
    } else if (errno != EINTR) {
      if (!would_block(errno)) {
        deliver(nullptr, -errno);
        epoll_watch();
      }
      return;
    }
  }
}

// libuv stops a poll handle that reports EPOLLERR. Whatever the peer sent
// before the error is still delivered (a read then reports the error
// itself); a writer hears of the socket's error; then watching resumes for
// whatever is still wanted.
void Stream::epoll_poll_error() noexcept {
  watching_ = 0;
  if (reading_) epoll_readable(true);
  if (closed()) return;
  if (queued() != 0 && !write_failed_) {
    // Sending again reports the error itself, for sockets and pipes alike.
    int rc = epoll_flush();
    if (rc != 0) report_write(rc);
  }
  if (!closed()) epoll_watch();
}

}  // namespace shardloop
