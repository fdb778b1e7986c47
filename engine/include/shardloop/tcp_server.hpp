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

#include "shardloop/owned_handle.hpp"
#include "shardloop/runtime.hpp"

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
// until on_close has returned. Its socket is driven by readiness (a libuv
// poll handle) with reads and writes made here: libuv's stream layer costs
// more instructions per request than the echo itself.
class Connection final : private OwnedHandle {
 public:
  // 0 or a negative libuv error (UV_EPIPE after shutdown()). Bytes the
  // kernel does not take at once are copied and sent in order.
  int write(const char* data, std::size_t len);
  int write(std::string_view s) { return write(s.data(), s.size()); }
  // Sends what is queued, then shuts down the write side.
  int shutdown();
  // Closes now (queued writes are dropped); on_close runs before it returns.
  void close() noexcept { OwnedHandle::close(); }
  bool closed() const noexcept { return OwnedHandle::closed(); }
  // 0, or the libuv error (negative) that ended the connection.
  int error() const noexcept { return error_; }
  std::size_t queued() const noexcept { return out_.size() - out_sent_; }
  unsigned shard() const noexcept { return shard_; }
  Loop& loop() const noexcept { return loop_; }

  void* user = nullptr;  // the application's per-connection state

 private:
  friend struct TcpServer::Shared;
  Connection(Loop& loop, int fd, const TcpHandlers* handlers, unsigned shard);
  ~Connection() override = default;
  static Connection* open(Loop& loop, int fd, const TcpHandlers* handlers, unsigned shard);
  void start() noexcept;
  uv_handle_t* uv_handle() noexcept override { return reinterpret_cast<uv_handle_t*>(&poll_); }
  void on_close() noexcept override;
  static void on_poll(uv_poll_t* handle, int status, int events);
  void on_readable() noexcept;
  void on_writable() noexcept;
  void on_poll_error() noexcept;
  int flush() noexcept;
  void watch() noexcept;
  void fail(int error) noexcept;

  uv_poll_t poll_{};
  const TcpHandlers* handlers_;
  std::string out_;  // queued bytes; out_[0, out_sent_) already sent
  std::size_t out_sent_ = 0;
  int fd_;
  int error_ = 0;
  int watching_ = 0;  // the poll events asked of libuv
  unsigned shard_;
  bool reading_ = false;
  bool shutdown_pending_ = false;  // shut down once the queue is sent
  bool write_closed_ = false;
};

}  // namespace shardloop
