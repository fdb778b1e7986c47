// Socket operations waiting for their fd (asyncio's sock_recv, sock_sendall,
// sock_accept ... once the kernel has said "later"): the owner tries the
// system call itself, and asks the loop's SockWaits to call it back when
// the socket may be ready, until the owner says it is done.
//
// Why not an FdWatcher per operation: a watch costs a dup(), a fcntl() and
// two epoll_ctl() (about 5 system calls) per wait, which is what made the
// sock_* echo slow. Here sockets sit in one private epoll set per loop,
// whose fd is the one thing libuv polls, and stay there while operations
// come and go: a wait on a socket already in the set for that side costs
// no system call. Level-triggered, as asyncio's selector: a "later" that
// did not come from the kernel (a mock's, an injected fault's) is simply
// tried again at the next poll. The set's interest follows the waiters
// lazily: a side (or a socket) nobody waits on any more leaves it when it
// next reports something, so a request/response socket never changes it.
// No duplicate fd is kept: an owner that closes its socket takes it out of
// the set (the kernel does), and the connection really closes.
#pragma once

#include <uv.h>

#include <cstdint>
#include <vector>

#include "shardloop/owned_handle.hpp"

namespace shardloop {

class SockOp {
 public:
  enum Side : int { kRead = 0, kWrite = 1 };

  // The socket may be ready on the side waited for, or has an error: try
  // again. The operation still waits; the owner calls SockWaits::cancel()
  // once it is done (from here too).
  virtual void on_ready() noexcept = 0;

  int fd() const noexcept { return fd_; }
  Side side() const noexcept { return side_; }
  bool waiting() const noexcept { return fd_ >= 0; }

 protected:
  SockOp() = default;
  ~SockOp() = default;

 private:
  friend class SockWaits;
  int fd_ = -1;
  Side side_ = kRead;
};

class SockWaits final : public OwnedHandle {
 public:
  // Throws std::system_error (epoll_create1, uv_poll_init).
  static SockWaits* open(Loop& loop);

  // `op` waits on `fd`'s `side`. One operation per side, as asyncio has one
  // reader and one writer per fd: the one waiting there before is returned,
  // no longer waiting (nullptr if none). `fresh`: `fd` may now be another
  // file than the one an earlier wait registered under that number (the
  // owner closed its socket and got the number again), so register again.
  // Throws std::system_error (epoll_ctl: EBADF, EPERM for a regular file,
  // ENOMEM); nothing changes then.
  SockOp* wait(SockOp* op, int fd, SockOp::Side side, bool fresh);
  // `op` no longer waits (a no-op if it does not).
  void cancel(SockOp* op) noexcept;
  SockOp* waiter(int fd, SockOp::Side side) const noexcept;
  // Operations waiting now.
  std::size_t size() const noexcept { return waiting_; }

  // In a fork child: the epoll set is shared with the parent, so a new one
  // takes its fd number and the waiting sockets join it.
  void after_fork();

  // epoll_ctl calls made so far (for tests: a wait on a socket already in
  // the set for its side costs none).
  std::uint64_t ctl_calls() const noexcept { return ctl_calls_; }

 private:
  struct Entry {
    SockOp* ops[2] = {nullptr, nullptr};
    std::uint32_t interest = 0;  // the events the set has for this fd; 0: not in it
  };

  explicit SockWaits(Loop& loop);
  ~SockWaits() override;
  uv_handle_t* uv_handle() noexcept override { return reinterpret_cast<uv_handle_t*>(&poll_); }
  void on_close() noexcept override;
  static void on_poll(uv_poll_t* handle, int status, int events);
  void dispatch(int fd, std::uint32_t events) noexcept;
  static std::uint32_t wanted(const Entry& e) noexcept;
  int set_interest(int fd, Entry& e, std::uint32_t events, bool fresh) noexcept;

  uv_poll_t poll_{};
  std::vector<Entry> entries_;  // by fd
  std::size_t waiting_ = 0;
  std::uint64_t ctl_calls_ = 0;
  int epfd_ = -1;
};

}  // namespace shardloop
