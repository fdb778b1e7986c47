#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <system_error>

#include "shardloop/loop.hpp"
#include "shardloop/tcp_server.hpp"

namespace shardloop {

namespace {

template <typename F>
void guarded(Loop& loop, F&& f) noexcept {
  try {
    f();
  } catch (...) {
    loop.report_error(std::current_exception());
  }
}

// A full buffer means more may be waiting: read again rather than go back
// to epoll for it, but not forever, so one busy peer cannot starve the rest.
constexpr int kReadsPerWake = 16;

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

}  // namespace

Connection::Connection(Loop& loop, int fd, const TcpHandlers* handlers, unsigned shard)
    : OwnedHandle(loop), handlers_(handlers), fd_(fd), shard_(shard) {}

Connection* Connection::open(Loop& loop, int fd, const TcpHandlers* handlers, unsigned shard) {
  auto* self = new (std::nothrow) Connection(loop, fd, handlers, shard);
  if (!self) {
    ::close(fd);
    throw std::bad_alloc();
  }
  int rc = uv_poll_init(loop.uv(), &self->poll_, fd);
  if (rc != 0) {
    delete self;  // never a libuv handle: nothing for libuv to close
    ::close(fd);
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  self->poll_.data = self;
  return self;
}

void Connection::start() noexcept {
  if (handlers_->on_connection) guarded(loop_, [&] { handlers_->on_connection(*this); });
  if (closed()) return;
  reading_ = true;
  watch();
}

int Connection::write(const char* data, std::size_t len) {
  if (closed()) return UV_EBADF;
  if (write_closed_ || shutdown_pending_) return UV_EPIPE;
  if (len == 0) return 0;
  if (queued() == 0) {
    // Nothing may overtake queued bytes; with none, try the kernel first.
    ssize_t n;
    do n = ::send(fd_, data, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0) {
      if (static_cast<std::size_t>(n) == len) return 0;
      data += n;
      len -= static_cast<std::size_t>(n);
    } else if (!would_block(errno) && errno != ENOBUFS) {
      return -errno;
    }
    out_.clear();
    out_sent_ = 0;
  } else if (out_sent_ >= out_.size() / 2) {
    // Drop what was sent once it is at least half the buffer: each byte is
    // moved at most once more.
    out_.erase(0, out_sent_);
    out_sent_ = 0;
  }
  try {
    out_.append(data, len);
  } catch (const std::bad_alloc&) {
    return UV_ENOMEM;
  }
  watch();
  return 0;
}

int Connection::shutdown() {
  if (closed()) return UV_EBADF;
  if (write_closed_ || shutdown_pending_) return UV_EPIPE;
  shutdown_pending_ = true;
  int rc = flush();
  if (rc == 0) watch();
  return rc;
}

// Sends what the kernel takes; once the queue is empty, a pending shutdown
// happens. 0, or the negative errno that failed.
int Connection::flush() noexcept {
  while (out_sent_ < out_.size()) {
    ssize_t n = ::send(fd_, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return would_block(errno) || errno == ENOBUFS ? 0 : -errno;
    }
    out_sent_ += static_cast<std::size_t>(n);
  }
  out_.clear();
  out_sent_ = 0;
  if (shutdown_pending_) {
    shutdown_pending_ = false;
    write_closed_ = true;
    if (::shutdown(fd_, SHUT_WR) != 0) return -errno;
  }
  return 0;
}

// Asks libuv for exactly the events there is something to do for.
void Connection::watch() noexcept {
  if (closed()) return;
  int events = (reading_ ? UV_READABLE : 0) | (queued() != 0 || shutdown_pending_ ? UV_WRITABLE : 0);
  if (events == watching_) return;
  int rc = events ? uv_poll_start(&poll_, events, &Connection::on_poll) : uv_poll_stop(&poll_);
  if (rc != 0) return fail(rc);
  watching_ = events;
}

void Connection::fail(int error) noexcept {
  if (error_ == 0) error_ = error;
  close();
}

void Connection::on_poll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<Connection*>(handle->data);
  if (self->closed()) return;
  self->loop_.resume();
  if (status < 0) return self->on_poll_error();
  if (events & UV_READABLE) self->on_readable();
  if ((events & UV_WRITABLE) && !self->closed()) self->on_writable();
}

void Connection::on_readable() noexcept {
  char* buf;
  try {
    buf = loop_.read_buffer();
  } catch (const std::bad_alloc&) {
    return fail(UV_ENOBUFS);
  }
  for (int i = 0; i < kReadsPerWake && reading_ && !closed(); ++i) {
    ssize_t n = ::read(fd_, buf, Loop::kReadBufferSize);
    if (n > 0) {
      if (handlers_->on_data) guarded(loop_, [&] { handlers_->on_data(*this, buf, static_cast<std::size_t>(n)); });
      if (static_cast<std::size_t>(n) < Loop::kReadBufferSize) return;
    } else if (n == 0) {
      reading_ = false;
      watch();
      if (closed()) return;
      if (handlers_->on_eof)
        guarded(loop_, [&] { handlers_->on_eof(*this); });
      else
        close();
      return;
    } else if (errno != EINTR) {
      if (!would_block(errno)) fail(-errno);
      return;
    }
  }
}

void Connection::on_writable() noexcept {
  int rc = flush();
  if (rc != 0) return fail(rc);
  watch();
}

// libuv stops a poll handle that reports EPOLLERR. Whatever the peer sent
// before the error is still delivered; then the socket's error ends the
// connection, or, when there is none any more, watching resumes.
void Connection::on_poll_error() noexcept {
  watching_ = 0;
  if (reading_) on_readable();
  if (closed()) return;
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) return fail(-err);
  watch();
}

// However it closes (close(), an error, the loop closing): out of epoll
// before the fd goes, then the application hears of it. The object is
// freed once libuv has finished closing the handle, after the callback
// that closed it has returned.
void Connection::on_close() noexcept {
  uv_poll_stop(&poll_);
  ::close(fd_);
  fd_ = -1;
  out_.clear();
  out_sent_ = 0;
  if (handlers_->on_close) guarded(loop_, [&] { handlers_->on_close(*this); });
  release();
}

}  // namespace shardloop
