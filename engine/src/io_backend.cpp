// Choosing a loop's I/O backend: epoll (libuv readiness) or io_uring.
#include <stdexcept>
#include <system_error>

#include "ring.hpp"
#include "shardloop/loop.hpp"

namespace shardloop {

bool Loop::set_io_backend(IoBackend backend, bool strict) {
  if (running_ || ring_) throw std::logic_error("the I/O backend is chosen before the loop first runs");
  io_fallback_.clear();
  want_ring_ = false;
  if (backend == IoBackend::kEpoll) return true;
  try {
    Ring::probe();
  } catch (const std::system_error& e) {
    if (strict) throw;
    io_fallback_ = e.what();
    return false;
  }
  want_ring_ = true;
  return true;
}

// On the thread that runs the loop: a ring created with SINGLE_ISSUER
// accepts submissions from its creator only.
void Loop::start_ring() {
  const auto self = std::this_thread::get_id();
  if (ring_) {
    if (ring_thread_ != self) throw std::logic_error("an io_uring event loop runs only on the thread that first ran it");
    return;
  }
  try {
    ring_ = std::make_unique<Ring>(*this);
    ring_thread_ = self;
  } catch (const std::system_error& e) {
    // The probe passed, so this is a resource limit of the moment: the
    // loop stays on epoll rather than fail to run.
    want_ring_ = false;
    io_fallback_ = e.what();
  }
}

}  // namespace shardloop
