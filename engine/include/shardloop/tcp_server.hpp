// A TCP server on every shard of a Runtime: one SO_REUSEPORT listening
// socket per shard, so the kernel spreads connections over the shards and
// each connection lives and is served on the shard that accepted it.
// Everything a handler touches belongs to that shard: no locks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shardloop/runtime.hpp"
#include "shardloop/stream.hpp"

namespace shardloop {

class Connection;

struct TcpHandlers {
  std::function<void(Connection&)> on_connection;
  std::function<void(Connection&, const char* data, std::size_t len)> on_data;
  // The peer shut down its side. Default: close the connection.
  std::function<void(Connection&)> on_eof;
  // Once, when the connection closes for any reason (close(), an error,
  // the runtime shutting down); error() says which.
  std::function<void(Connection&)> on_close;
};

class TcpServer {
 public:
  struct Options {
    std::string host = "127.0.0.1";  // IPv4 or IPv6 literal
    std::uint16_t port = 0;          // 0: the first listener picks, the others share it
    int backlog = 1024;
    bool nodelay = true;  // TCP_NODELAY on accepted sockets
  };

  // Any thread, before or while `rt` runs. Binds one listener per shard now
  // (throws std::system_error on failure); shard s starts accepting when
  // its loop picks up the work posted to it.
  static std::shared_ptr<TcpServer> listen(Runtime& rt, const Options& options, TcpHandlers handlers);

  std::uint16_t port() const noexcept { return port_; }
  // Any thread: stops accepting on every shard; established connections
  // stay open (as asyncio's Server.close() leaves them).
  void close();
  // Connections accepted so far, per shard.
  std::vector<std::uint64_t> connections_per_shard() const;

  struct Shared;
  ~TcpServer();

 private:
  TcpServer() = default;
  std::shared_ptr<Shared> shared_;
  std::uint16_t port_ = 0;
};

// One accepted connection; only its shard's thread may use it, and only
// until the callback in which on_close ran has returned. It is a Stream (stream.hpp) with the
// server's handlers: the same reads, write queue and close path as
// Python's transports, on the loop's backend (epoll or io_uring).
class Connection final {
 public:
  // 0 or a negative libuv error (UV_EPIPE after shutdown(), UV_EBADF once
  // closed). Bytes the kernel does not take at once are copied and sent in
  // order.
  int write(const char* data, std::size_t len);
  int write(std::string_view s) { return write(s.data(), s.size()); }
  // Sends what is queued, then shuts down the write side.
  int shutdown();
  // Closes now (queued writes are dropped); on_close runs before it returns.
  void close() noexcept;
  bool closed() const noexcept { return stream_ == nullptr; }
  // 0, or the libuv error (negative) that ended the connection.
  int error() const noexcept { return error_; }
  std::size_t queued() const noexcept;
  unsigned shard() const noexcept { return shard_; }
  Loop& loop() const noexcept { return loop_; }

  void* user = nullptr;  // the application's per-connection state

 private:
  friend struct TcpServer::Shared;
  Connection(Loop& loop, std::shared_ptr<const TcpHandlers> handlers, unsigned shard)
      : loop_(loop), handlers_(std::move(handlers)), shard_(shard) {}
  // Takes `fd` (closed on failure) and runs on_connection.
  static void start(Loop& loop, int fd, std::shared_ptr<const TcpHandlers> handlers, unsigned shard);
  static void on_read(void* ctx, const char* data, ssize_t nread) noexcept;
  static void on_write(void* ctx, int status, std::size_t queued) noexcept;
  static void on_close(void* ctx) noexcept;
  void fail(int error) noexcept;

  Loop& loop_;
  Stream* stream_ = nullptr;
  // Shared with the server: a connection that outlives its listener (the
  // loop closing it after the shard's exit hooks ran) still has them.
  std::shared_ptr<const TcpHandlers> handlers_;
  int error_ = 0;
  unsigned shard_;
};

}  // namespace shardloop
