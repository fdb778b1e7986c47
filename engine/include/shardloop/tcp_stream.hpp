// A connected byte stream: a TCP socket on uv_tcp_t, or a Unix socket or
// pipe on uv_pipe_t. Reads delivered as they arrive, writes attempted at once
// and queued (copied) for the rest, in order.
#pragma once

#include <uv.h>

#include <cstddef>
#include <memory>

#include "shardloop/owned_handle.hpp"

namespace shardloop {

class TcpStream final : public OwnedHandle {
 public:
  struct Callbacks {
    void* ctx = nullptr;
    // nread > 0: data; UV_EOF: the peer shut down its side; < 0: error.
    void (*on_read)(void* ctx, const char* data, ssize_t nread) noexcept = nullptr;
    // A queued write finished (status < 0: it failed); `queued` bytes remain.
    void (*on_write)(void* ctx, int status, std::size_t queued) noexcept = nullptr;
    void (*on_shutdown)(void* ctx, int status) noexcept = nullptr;
    // The stream closed (by its owner or by the loop closing): no callback
    // follows.
    void (*on_close)(void* ctx) noexcept = nullptr;
  };

  enum class Kind { kTcp, kPipe };

  // Takes ownership of `fd` (a connected socket, or one end of a pipe for
  // kPipe). Throws std::system_error.
  static TcpStream* open(Loop& loop, int fd, const Callbacks& callbacks, Kind kind = Kind::kTcp);

  // These return 0 or a negative libuv error code.
  int read_start();
  int read_stop();
  int write(const char* data, std::size_t len);
  int shutdown();

  std::size_t queued() const noexcept { return queued_; }
  bool reading() const noexcept { return reading_; }

 private:
  struct WriteReq;
  TcpStream(Loop& loop, const Callbacks& callbacks);
  ~TcpStream() override = default;
  uv_handle_t* uv_handle() noexcept override { return &handle_.handle; }
  void on_close() noexcept override {
    if (callbacks_.on_close) callbacks_.on_close(callbacks_.ctx);
  }
  uv_stream_t* stream() noexcept { return &handle_.stream; }
  [[gnu::noinline]] int queue_write(const char* data, std::size_t len);

  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } handle_{};
  uv_shutdown_t shutdown_req_{};
  Callbacks callbacks_;
  std::size_t queued_ = 0;
  int fd_ = -1;
  bool reading_ = false;
  // write() may call write(2) itself while nothing is queued: a TCP stream
  // that libuv still counts writable (no shutdown, no read error). Saves
  // uv_try_write's checks and iovec set-up on every echo.
  bool direct_write_ = false;
};

}  // namespace shardloop
