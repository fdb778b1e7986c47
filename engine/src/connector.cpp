// A connect on the loop's ring (connector.hpp).
#include "shardloop/connector.hpp"

#include <cstring>
#include <stdexcept>

#include "ring.hpp"
#include "shardloop/loop.hpp"

namespace shardloop {

Connector::Connector(Loop& loop, Ring* ring, const Callbacks& callbacks)
    : OwnedHandle(loop), callbacks_(callbacks), ring_(ring) {}

Connector* Connector::start(Loop& loop, int fd, const sockaddr* addr, socklen_t len, const Callbacks& callbacks) {
  if (len > sizeof(sockaddr_storage)) throw std::invalid_argument("socket address too long");
  Ring* ring = loop.ring();
  if (ring == nullptr || ring->detached() || Loop::current() != &loop) return nullptr;
  auto* self = new Connector(loop, ring, callbacks);
  std::memcpy(&self->addr_, addr, len);
  io_uring_sqe* s = ring->sqe(Ring::client_tag(self));
  io_uring_prep_connect(s, fd, reinterpret_cast<const sockaddr*>(&self->addr_), len);
  self->inflight_ = true;
  ++loop.io_stats().connect_sqes;
  // Submitted now, not with the iteration's batch: connect(2) sends the SYN
  // before it returns, and callers rely on that (CPython's
  // test_sock_client_racing accepts on a blocking listener right after one
  // sleep(0), which hung until the test's timeout with the SQE still queued).
  ring->submit_now();
  return self;
}

void Connector::on_ring_completion(int res, unsigned) noexcept {
  // Still counted in flight while the owner's callback runs, so a
  // release() from inside it cannot free the object under this frame.
  done_ = true;
  if (!closed()) callbacks_.on_done(callbacks_.ctx, res);
  inflight_ = false;
  if (closed()) handle_closed();  // may delete this
}

// close(): a connect still in the kernel is cancelled, and the
// cancellation submitted at once, so the kernel lets go of the socket
// before its owner closes it (a socket the ring still holds would go on
// connecting, unseen). The object goes with the connect's completion.
void Connector::close_handle() noexcept {
  if (!inflight_ || ring_->detached()) {
    // Nothing in flight, or nothing will ever complete (a loop closed on
    // another thread tore the ring down, which cancelled the connect).
    inflight_ = false;
    handle_closed();
    return;
  }
  if (!done_) {
    io_uring_prep_cancel64(ring_->sqe(Ring::kIgnore), Ring::client_tag(this), 0);
    ring_->submit_now();
  }
}

}  // namespace shardloop
