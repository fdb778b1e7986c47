// One connect(2) on the loop's io_uring: an IORING_OP_CONNECT, whose
// completion says how the connect ended (0, or the errno that SO_ERROR
// would have given after a wait for writability on epoll). The kernel
// retries the connect itself when the socket turns writable, so nothing
// waits in the loop's epoll set for it. Used by Python's sock_connect
// (and so create_connection) for TCP sockets on io_uring loops; epoll
// loops, and sockets of other kinds, connect and wait on readiness.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include "shardloop/owned_handle.hpp"
#include "shardloop/ring_client.hpp"

namespace shardloop {

class Ring;

class Connector final : public OwnedHandle, private RingClient {
 public:
  struct Callbacks {
    void* ctx = nullptr;
    // The connect ended: 0 (connected) or a negative errno. Called once,
    // from the ring's completion pass, unless the owner closed the
    // Connector first; it may release() the Connector.
    void (*on_done)(void* ctx, int status) noexcept = nullptr;
  };

  // Starts connecting `fd` (a socket, left the owner's) to `addr`, which
  // is copied and lives here until the completion. nullptr when `loop` has
  // no usable ring on this thread: the owner connects on readiness.
  // Throws std::bad_alloc, or std::invalid_argument for an address longer
  // than sockaddr_storage.
  //
  // The kernel holds its own reference to the socket while the connect is
  // in flight: closing `fd` alone does not end it (nor free the socket);
  // close() does, by cancelling it.
  static Connector* start(Loop& loop, int fd, const sockaddr* addr, socklen_t len, const Callbacks& callbacks);

  // Whether the completion has come (on_done ran, or would have).
  bool done() const noexcept { return done_; }

 private:
  Connector(Loop& loop, Ring* ring, const Callbacks& callbacks);
  ~Connector() override = default;
  uv_handle_t* uv_handle() noexcept override { return nullptr; }  // none: close_handle() is its own
  void close_handle() noexcept override;
  void on_ring_completion(int res, unsigned flags) noexcept override;

  Callbacks callbacks_;
  Ring* ring_;
  sockaddr_storage addr_{};  // read by the kernel when the SQE is submitted
  bool inflight_ = false;
  bool done_ = false;
};

}  // namespace shardloop
