// The C++ API's connection: a Stream with the server's handlers.
#include <unistd.h>

#include <new>
#include <stdexcept>

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

}  // namespace

void Connection::start(Loop& loop, int fd, std::shared_ptr<const TcpHandlers> handlers, unsigned shard) {
  auto* self = new (std::nothrow) Connection(loop, std::move(handlers), shard);
  if (self == nullptr) {
    ::close(fd);
    throw std::bad_alloc();
  }
  try {
    self->stream_ = Stream::open(loop, fd, Stream::Callbacks{self, &on_read, &on_write, nullptr, &on_close});
  } catch (...) {
    delete self;  // the stream closed fd
    throw;
  }
  Stream* stream = self->stream_;
  if (self->handlers_->on_connection) guarded(loop, [&] { self->handlers_->on_connection(*self); });
  // on_connection may have closed it: then `self` is gone, and `stream`
  // lives until libuv or the ring is done with it.
  if (!stream->closed()) stream->read_start();
}

int Connection::write(const char* data, std::size_t len) { return stream_ ? stream_->write(data, len) : UV_EBADF; }

int Connection::shutdown() { return stream_ ? stream_->shutdown() : UV_EBADF; }

std::size_t Connection::queued() const noexcept { return stream_ ? stream_->queued() : 0; }

void Connection::close() noexcept {
  if (stream_) stream_->close();  // on_close below runs now and frees this
}

void Connection::fail(int error) noexcept {
  if (error_ == 0) error_ = error;
  close();
}

void Connection::on_read(void* ctx, const char* data, ssize_t nread) noexcept {
  auto* self = static_cast<Connection*>(ctx);
  if (nread > 0) {
    if (self->handlers_->on_data)
      guarded(self->loop_, [&] { self->handlers_->on_data(*self, data, static_cast<std::size_t>(nread)); });
  } else if (nread == UV_EOF) {
    if (self->handlers_->on_eof)
      guarded(self->loop_, [&] { self->handlers_->on_eof(*self); });
    else
      self->close();
  } else {
    self->fail(static_cast<int>(nread));
  }
}

void Connection::on_write(void* ctx, int status, std::size_t) noexcept {
  if (status < 0) static_cast<Connection*>(ctx)->fail(status);
}

// However the stream closes (close(), an error, the runtime shutting down),
// the application hears of it once; then the connection is gone.
void Connection::on_close(void* ctx) noexcept {
  auto* self = static_cast<Connection*>(ctx);
  Stream* stream = self->stream_;
  self->stream_ = nullptr;
  if (self->handlers_->on_close) guarded(self->loop_, [&] { self->handlers_->on_close(*self); });
  stream->release();  // already closed: only says the owner is done with it
  // A handler may still ask closed() or error() after close() returns (in
  // the callback that closed it): the object goes in the next iteration,
  // or now when the loop itself is closing.
  try {
    // Run or discarded (the loop closing first), the Work frees it.
    self->loop_.call_soon(Work{[](void* p, bool) noexcept { delete static_cast<Connection*>(p); }, self});
  } catch (...) {
    delete self;
  }
}

}  // namespace shardloop
