#include "shardloop/tcp_stream.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

namespace {

// uv_buf_init() takes an unsigned int; uv_buf_t itself holds a size_t on
// Unix, so 4 GiB and more must not go through it.
uv_buf_t make_buf(char* base, std::size_t len) {
  uv_buf_t buf;
  buf.base = base;
  buf.len = len;
  return buf;
}

}  // namespace

struct TcpStream::WriteReq {
  uv_write_t req;
  TcpStream* stream;
  std::size_t len;
  char data[1];  // len bytes, allocated with the request

  static WriteReq* make(TcpStream* stream, const char* data, std::size_t len) {
    void* mem = ::operator new(offsetof(WriteReq, data) + len);
    auto* req = static_cast<WriteReq*>(mem);
    req->stream = stream;
    req->len = len;
    std::memcpy(req->data, data, len);
    return req;
  }
  static void destroy(WriteReq* req) { ::operator delete(req); }
};

TcpStream::TcpStream(Loop& loop, const Callbacks& callbacks) : OwnedHandle(loop), callbacks_(callbacks) {}

TcpStream* TcpStream::open(Loop& loop, int fd, const Callbacks& callbacks, Kind kind) {
  if (loop.is_closed()) throw std::logic_error("Event loop is closed");
  auto* self = new TcpStream(loop, callbacks);
  int rc = kind == Kind::kTcp ? uv_tcp_init(loop.uv(), &self->handle_.tcp) : uv_pipe_init(loop.uv(), &self->handle_.pipe, 0);
  if (rc == 0) {
    self->handle_.handle.data = self;
    rc = kind == Kind::kTcp ? uv_tcp_open(&self->handle_.tcp, fd) : uv_pipe_open(&self->handle_.pipe, fd);
    self->fd_ = fd;
    self->direct_write_ = kind == Kind::kTcp;
    if (rc != 0) {
      self->release();  // closes the initialized handle; freed by libuv's callback
      throw std::system_error(-rc, std::generic_category(), kind == Kind::kTcp ? "uv_tcp_open" : "uv_pipe_open");
    }
    return self;
  }
  delete self;
  throw std::system_error(-rc, std::generic_category(), kind == Kind::kTcp ? "uv_tcp_init" : "uv_pipe_init");
}

int TcpStream::read_start() {
  if (closed()) return UV_EBADF;
  if (reading_) return 0;
  int rc = uv_read_start(
      stream(),
      [](uv_handle_t* handle, std::size_t, uv_buf_t* buf) {
        auto* self = static_cast<TcpStream*>(handle->data);
        try {
          *buf = make_buf(self->loop_.read_buffer(), Loop::kReadBufferSize);
        } catch (const std::bad_alloc&) {
          *buf = uv_buf_init(nullptr, 0);  // libuv reports UV_ENOBUFS
        }
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
        auto* self = static_cast<TcpStream*>(s->data);
        if (nread == 0 || self->closed()) return;
        // libuv now refuses writes on this stream (EPIPE): so must write().
        if (nread < 0 && nread != UV_EOF) self->direct_write_ = false;
        self->loop_.resume();
        self->callbacks_.on_read(self->callbacks_.ctx, buf->base, nread);
      });
  if (rc == 0) reading_ = true;
  return rc;
}

int TcpStream::read_stop() {
  if (!reading_ || closed()) return 0;
  reading_ = false;
  return uv_read_stop(stream());
}

int TcpStream::write(const char* data, std::size_t len) {
  if (closed()) return UV_EBADF;
  if (len == 0) return 0;
  // Order: nothing may overtake bytes already queued.
  if (queued_ == 0) {
    ssize_t n;
    if (direct_write_) {
      // What uv_try_write does for one buffer, errors included.
      do n = ::write(fd_, data, len);
      while (n < 0 && errno == EINTR);
      if (n < 0) n = errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ? UV_EAGAIN : -errno;
    } else {
      uv_buf_t buf = make_buf(const_cast<char*>(data), len);
      n = uv_try_write(stream(), &buf, 1);
    }
    if (n > 0) {
      data += n;
      len -= static_cast<std::size_t>(n);
      if (len == 0) return 0;
    } else if (n != UV_EAGAIN) {
      return static_cast<int>(n);
    }
  }
  return queue_write(data, len);
}

// Out of line: write()'s fast path then needs no stack frame to speak of.
int TcpStream::queue_write(const char* data, std::size_t len) {
  WriteReq* req = WriteReq::make(this, data, len);
  uv_buf_t buf = make_buf(req->data, len);
  int rc = uv_write(&req->req, stream(), &buf, 1, [](uv_write_t* w, int status) {
    auto* r = reinterpret_cast<WriteReq*>(w);
    TcpStream* self = r->stream;
    self->queued_ -= r->len;
    WriteReq::destroy(r);
    if (self->closed()) return;
    self->loop_.resume();
    self->callbacks_.on_write(self->callbacks_.ctx, status, self->queued_);
  });
  if (rc != 0) {
    WriteReq::destroy(req);
    return rc;
  }
  queued_ += len;
  return 0;
}

int TcpStream::shutdown() {
  if (closed()) return UV_EBADF;
  shutdown_req_.data = this;
  direct_write_ = false;  // libuv refuses writes from now on, and so must write()
  return uv_shutdown(&shutdown_req_, stream(), [](uv_shutdown_t* req, int status) {
    auto* self = static_cast<TcpStream*>(req->data);
    if (self->closed()) return;
    self->loop_.resume();
    self->callbacks_.on_shutdown(self->callbacks_.ctx, status);
  });
}

}  // namespace shardloop
