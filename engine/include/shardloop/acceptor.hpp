// A listening socket's accepts on the loop's io_uring: one multishot
// IORING_OP_ACCEPT stays armed, and each of its completions is a new
// connection, where the readiness path costs an epoll wake-up and an
// accept4(2) (plus the EAGAIN that ends each batch). Used by Python's
// create_server listeners and the C++ TcpServer on io_uring loops; epoll
// loops, and kernels without multishot accept, keep accepting on readiness.
#pragma once

#include <uv.h>

#include <vector>

#include "shardloop/owned_handle.hpp"
#include "shardloop/ring_client.hpp"

namespace shardloop {

class Ring;

class Acceptor final : public OwnedHandle, private RingClient {
 public:
  struct Callbacks {
    void* ctx = nullptr;
    // A new connection; `fd` (non-blocking, close-on-exec) is the owner's.
    void (*on_accept)(void* ctx, int fd) noexcept = nullptr;
    // Accepting failed with `err` (a positive errno) other than the ones
    // asyncio retries in silence (EAGAIN, EINTR, ECONNABORTED). Out of
    // resources (out_of_resources(err)): accepting stops until the owner
    // calls resume() (asyncio waits a second); any other error: accepting
    // goes on.
    void (*on_error)(void* ctx, int err) noexcept = nullptr;
  };

  // nullptr when `loop` has no ring on this thread or this kernel has no
  // multishot accept (found once per process by a real round trip): the
  // owner accepts on readiness instead. `fd` stays the owner's; it must
  // outlive this object's close(), which stops the kernel's use of it
  // before returning when the kernel allows (the socket then stops
  // listening once its owner closes it).
  static Acceptor* open(Loop& loop, int fd, const Callbacks& callbacks);
  static bool out_of_resources(int err) noexcept;
  // Whether this process can accept on a ring (probed once, on first use).
  static bool supported() noexcept;

  // After an out-of-resources error: accepting starts again, with the
  // connections held meanwhile (see place()) first.
  void resume() noexcept;

 private:
  void on_ring_completion(int res, unsigned flags) noexcept override;
  Acceptor(Loop& loop, Ring* ring, int fd, const Callbacks& callbacks);
  ~Acceptor() override = default;
  uv_handle_t* uv_handle() noexcept override { return nullptr; }  // none: close_handle() is its own
  void close_handle() noexcept override;
  void arm() noexcept;
  bool place(int& fd) noexcept;
  void deliver(int fd) noexcept;
  void stop(int err) noexcept;

  Callbacks callbacks_;
  Ring* ring_;
  int fd_;
  int inflight_ = 0;  // the accept, until its last completion
  bool armed_ = false;
  bool stopped_ = false;   // out of resources, until resume()
  std::vector<int> held_;  // accepted over the descriptor limit, not yet delivered
};

}  // namespace shardloop
