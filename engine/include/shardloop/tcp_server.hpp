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
#include "shardloop/tcp_stream.hpp"

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

// One accepted connection; only its shard's thread may use it, and only
// until on_close has returned.
class Connection {
 public:
  // 0 or a negative libuv error. Bytes the kernel does not take at once are
  // copied and sent in order.
  int write(const char* data, std::size_t len) { return closed_ ? UV_EBADF : stream_->write(data, len); }
  int write(std::string_view s) { return write(s.data(), s.size()); }
  // Sends what is queued, then shuts down the write side.
  int shutdown() { return closed_ ? UV_EBADF : stream_->shutdown(); }
  // Closes now (queued writes are dropped); on_close runs before it returns.
  void close() noexcept;
  bool closed() const noexcept { return closed_; }
  // 0, or the libuv error (negative) that ended the connection.
  int error() const noexcept { return error_; }
  std::size_t queued() const noexcept { return closed_ ? 0 : stream_->queued(); }
  unsigned shard() const noexcept { return shard_; }
  Loop& loop() const noexcept { return *loop_; }

  void* user = nullptr;  // the application's per-connection state

 private:
  friend class TcpServer;
  Connection() = default;
  ~Connection() = default;

  TcpStream* stream_ = nullptr;
  const TcpHandlers* handlers_ = nullptr;
  Loop* loop_ = nullptr;
  unsigned shard_ = 0;
  int error_ = 0;
  bool closed_ = false;
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

}  // namespace shardloop
