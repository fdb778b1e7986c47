// Multishot accept on the loop's ring (acceptor.hpp).
#include "shardloop/acceptor.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <new>
#include <vector>

#include "ring.hpp"
#include "shardloop/loop.hpp"

namespace shardloop {

namespace {

constexpr int kAcceptFlags = SOCK_NONBLOCK | SOCK_CLOEXEC;

// A real round trip on a private ring: a multishot accept on a Unix
// listener (no port, no file: an autobound abstract name), one connect,
// and a completion that says the accept stays armed. A kernel before 5.19
// fails the SQE (EINVAL), one without io_uring fails the setup: either
// way, false.
bool probe_multishot_accept() noexcept {
  io_uring ring{};
  io_uring_params p{};
  if (io_uring_queue_init_params(4, &ring, &p) != 0) return false;
  int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int client = -1;
  bool ok = false;
  sockaddr_un addr{};
  socklen_t len = sizeof(sa_family_t);
  addr.sun_family = AF_UNIX;
  if (listener >= 0 && ::bind(listener, reinterpret_cast<sockaddr*>(&addr), len) == 0 && ::listen(listener, 4) == 0 &&
      (len = sizeof addr, ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0)) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    io_uring_prep_multishot_accept(sqe, listener, nullptr, nullptr, kAcceptFlags);
    client = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc;
    do rc = io_uring_submit(&ring);
    while (rc == -EINTR);
    if (rc == 1 && client >= 0 && ::connect(client, reinterpret_cast<sockaddr*>(&addr), len) == 0) {
      io_uring_cqe* cqe = nullptr;
      do rc = io_uring_wait_cqe(&ring, &cqe);
      while (rc == -EINTR);
      if (rc == 0) {
        ok = cqe->res >= 0 && (cqe->flags & IORING_CQE_F_MORE);
        if (cqe->res >= 0) ::close(cqe->res);
      }
    }
  }
  // Tearing the ring down cancels the accept still armed.
  io_uring_queue_exit(&ring);
  if (client >= 0) ::close(client);
  if (listener >= 0) ::close(listener);
  return ok;
}

}  // namespace

bool Acceptor::supported() noexcept {
  // Once per process, again in a fork child (as Ring::probe()).
  static std::mutex mu;
  static pid_t probed_in = 0;
  static bool verdict = false;
  std::lock_guard<std::mutex> lock(mu);
  if (probed_in != ::getpid()) {
    verdict = probe_multishot_accept();
    probed_in = ::getpid();
  }
  return verdict;
}

bool Acceptor::out_of_resources(int err) noexcept {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

Acceptor::Acceptor(Loop& loop, Ring* ring, int fd, const Callbacks& callbacks)
    : OwnedHandle(loop), callbacks_(callbacks), ring_(ring), fd_(fd) {}

Acceptor* Acceptor::open(Loop& loop, int fd, const Callbacks& callbacks) {
  Ring* ring = loop.ring();
  if (ring == nullptr || ring->detached() || Loop::current() != &loop || !supported()) return nullptr;
  auto* self = new Acceptor(loop, ring, fd, callbacks);
  self->arm();
  return self;
}

void Acceptor::arm() noexcept {
  io_uring_sqe* s = ring_->sqe(Ring::client_tag(this));
  io_uring_prep_multishot_accept(s, fd_, nullptr, nullptr, kAcceptFlags);
  armed_ = true;
  ++inflight_;
}

// The kernel reads RLIMIT_NOFILE when the accept is prepared, not at each
// connection, so after the soft limit is lowered the ring can hand over a
// descriptor above it where accept(2) would fail with EMFILE. Such a
// descriptor moves below the current limit (F_DUPFD allocates as accept
// does); when none is free there the connection is held, in order, as the
// kernel's backlog would hold it, and accepting stops with EMFILE.
bool Acceptor::place(int& fd) noexcept {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || static_cast<rlim_t>(fd) < rl.rlim_cur)
    return true;
  const int low = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (low < 0 || static_cast<rlim_t>(low) >= rl.rlim_cur) {
    if (low >= 0) ::close(low);
    return false;
  }
  ::close(fd);
  fd = low;
  return true;
}

void Acceptor::stop(int err) noexcept {
  stopped_ = true;
  if (armed_) {
    io_uring_prep_cancel64(ring_->sqe(Ring::kIgnore), Ring::client_tag(this), 0);
    armed_ = false;  // its last completion still comes, and is counted
  }
  callbacks_.on_error(callbacks_.ctx, err);
}

void Acceptor::deliver(int fd) noexcept {
  if (stopped_ || !held_.empty() || !place(fd)) {
    try {
      held_.push_back(fd);
    } catch (const std::bad_alloc&) {
      ::close(fd);  // the connection is refused rather than lost track of
    }
    if (!stopped_) stop(EMFILE);
    return;
  }
  callbacks_.on_accept(callbacks_.ctx, fd);
}

void Acceptor::resume() noexcept {
  if (closed() || !stopped_) return;
  stopped_ = false;
  // The held connections first, in order, each as accept(2) would now.
  while (!held_.empty() && !closed()) {
    int fd = held_.front();
    if (!place(fd)) {
      stop(EMFILE);
      return;
    }
    held_.erase(held_.begin());
    callbacks_.on_accept(callbacks_.ctx, fd);
  }
  if (!closed() && !stopped_ && !armed_ && inflight_ == 0) arm();
}

void Acceptor::on_ring_completion(int res, unsigned flags) noexcept {
  // This completion stays counted while the owner's callbacks run, so a
  // close() from inside them cannot free the object under this frame.
  const bool last = !(flags & IORING_CQE_F_MORE);
  if (last) armed_ = false;
  if (res >= 0) {
    ++loop_.io_stats().accept_cqes;
    if (closed())
      ::close(res);  // accepted after close(): nobody's, so not kept open
    else
      deliver(res);
  } else if (!closed() && !stopped_ && res != -ECANCELED) {
    const int err = -res;
    if (out_of_resources(err))
      stop(err);  // until the owner resumes
    else if (err != EAGAIN && err != EINTR && err != ECONNABORTED)
      callbacks_.on_error(callbacks_.ctx, err);
  }
  if (last) --inflight_;
  if (closed()) {
    if (inflight_ == 0) handle_closed();  // may delete this
    return;
  }
  // The kernel ends a multishot accept after any error, and may end it at
  // any time (a full completion queue): accepting goes on. A stop()'s
  // cancelled accept ends here too; resume() arms the next one.
  if (!armed_ && !stopped_ && inflight_ == 0) arm();
}

// close(): the armed accept is cancelled and the cancellation submitted at
// once, so the kernel lets go of the listening socket before its owner
// closes it (a socket the ring still holds would keep listening on its
// port). The object goes with the accept's last completion.
void Acceptor::close_handle() noexcept {
  for (int fd : held_) ::close(fd);  // refused, as by a listener closing with a backlog
  held_.clear();
  if (ring_->detached() || inflight_ == 0) {
    // Nothing will complete (a loop closed on another thread tore the
    // ring down, which cancelled the accept), or nothing is in flight.
    inflight_ = 0;
    handle_closed();
    return;
  }
  if (armed_) {
    io_uring_prep_cancel64(ring_->sqe(Ring::kIgnore), Ring::client_tag(this), 0);
    ring_->submit_now();
  }
}

}  // namespace shardloop
