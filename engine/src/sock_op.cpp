#include "shardloop/sock_op.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

namespace {

constexpr std::uint32_t kReadInterest = EPOLLIN | EPOLLRDHUP;
constexpr std::uint32_t kWriteInterest = EPOLLOUT;
// What wakes each side: errors and hang-ups wake both, as a selector
// reports them to readers and writers alike.
constexpr std::uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr std::uint32_t kWriteEvents = EPOLLOUT | EPOLLHUP | EPOLLERR;
// Events taken off the set per wake-up; the rest stay ready in the kernel
// and make the set's fd readable again for the next poll.
constexpr int kBatch = 256;

}  // namespace

SockWaits::SockWaits(Loop& loop) : OwnedHandle(loop) {}

SockWaits::~SockWaits() {
  if (epfd_ >= 0) ::close(epfd_);
}

SockWaits* SockWaits::open(Loop& loop) {
  if (loop.is_closed()) throw std::logic_error("Event loop is closed");
  int epfd = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  auto* self = new (std::nothrow) SockWaits(loop);
  if (self == nullptr) {
    ::close(epfd);
    throw std::bad_alloc();
  }
  self->epfd_ = epfd;  // closed with the object
  int rc = uv_poll_init(loop.uv(), &self->poll_, epfd);
  if (rc != 0) {
    delete self;  // never a libuv handle: nothing for libuv to close
    throw std::system_error(-rc, std::generic_category(), "uv_poll_init");
  }
  rc = uv_poll_start(&self->poll_, UV_READABLE, &SockWaits::on_poll);
  if (rc != 0) {
    self->release();  // through libuv's close, like any open handle
    throw std::system_error(-rc, std::generic_category(), "uv_poll_start");
  }
  self->poll_.data = self;
  // Only waiting operations keep the loop polling (see wait/cancel).
  uv_unref(reinterpret_cast<uv_handle_t*>(&self->poll_));
  return self;
}

std::uint32_t SockWaits::wanted(const Entry& e) noexcept {
  return (e.ops[SockOp::kRead] ? kReadInterest : 0) | (e.ops[SockOp::kWrite] ? kWriteInterest : 0);
}

// Makes the set's interest in `fd` `events` (0: out of the set). `fresh`:
// the fd may be another file than the one registered under its number.
// 0 or the errno of a failed epoll_ctl.
int SockWaits::set_interest(int fd, Entry& e, std::uint32_t events, bool fresh) noexcept {
  if (!fresh && e.interest == events) return 0;
  if (events == 0) {
    if (e.interest != 0) {
      ++ctl_calls_;
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);  // ENOENT/EBADF: gone already
    }
    e.interest = 0;
    return 0;
  }
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = static_cast<std::uint64_t>(fd);
  int op = e.interest == 0 || fresh ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
  ++ctl_calls_;
  int rc = ::epoll_ctl(epfd_, op, fd, &ev);
  if (rc != 0 && (errno == EEXIST || errno == ENOENT)) {
    // In the set after all (a stale number's entry), or no longer (the
    // owner closed the socket and this is a new one under its number).
    op = errno == EEXIST ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    ++ctl_calls_;
    rc = ::epoll_ctl(epfd_, op, fd, &ev);
  }
  if (rc != 0) return errno;
  e.interest = events;
  return 0;
}

SockOp* SockWaits::wait(SockOp* op, int fd, SockOp::Side side, bool fresh) {
  if (closed()) throw std::logic_error("Event loop is closed");
  if (fd < 0) throw std::system_error(EBADF, std::generic_category(), "epoll_ctl");
  if (static_cast<std::size_t>(fd) >= entries_.size()) entries_.resize(static_cast<std::size_t>(fd) + 1);
  Entry& e = entries_[static_cast<std::size_t>(fd)];
  // Interest only grows here; what nobody waits for goes in dispatch().
  const std::uint32_t want = e.interest | (side == SockOp::kRead ? kReadInterest : kWriteInterest);
  if (int err = set_interest(fd, e, want, fresh)) throw std::system_error(err, std::generic_category(), "epoll_ctl");
  if (op->waiting()) cancel(op);
  SockOp* previous = e.ops[side];
  if (previous != nullptr) {
    previous->fd_ = -1;
  } else if (waiting_++ == 0) {
    uv_ref(reinterpret_cast<uv_handle_t*>(&poll_));
  }
  e.ops[side] = op;
  op->fd_ = fd;
  op->side_ = side;
  return previous;
}

void SockWaits::cancel(SockOp* op) noexcept {
  if (!op->waiting()) return;
  Entry& e = entries_[static_cast<std::size_t>(op->fd_)];
  if (e.ops[op->side_] == op) {
    e.ops[op->side_] = nullptr;
    if (--waiting_ == 0 && !closed()) uv_unref(reinterpret_cast<uv_handle_t*>(&poll_));
  }
  op->fd_ = -1;
}

SockOp* SockWaits::waiter(int fd, SockOp::Side side) const noexcept {
  if (fd < 0 || static_cast<std::size_t>(fd) >= entries_.size()) return nullptr;
  return entries_[static_cast<std::size_t>(fd)].ops[side];
}

void SockWaits::on_poll(uv_poll_t* handle, int, int) {
  auto* self = static_cast<SockWaits*>(handle->data);
  if (self->closed()) return;
  self->loop_.resume();
  epoll_event events[kBatch];
  int n;
  do n = ::epoll_wait(self->epfd_, events, kBatch, 0);
  while (n < 0 && errno == EINTR);
  for (int i = 0; i < n && !self->closed(); ++i)
    self->dispatch(static_cast<int>(events[i].data.u64), events[i].events);
}

void SockWaits::dispatch(int fd, std::uint32_t events) noexcept {
  if (static_cast<std::size_t>(fd) >= entries_.size()) return;
  // Entries are looked up again after each callback: it may have added
  // waiters (and grown the table) or cancelled the other side.
  Entry* e = &entries_[static_cast<std::size_t>(fd)];
  const bool reader = e->ops[SockOp::kRead] != nullptr;
  const bool writer = e->ops[SockOp::kWrite] != nullptr;
  if ((events & kReadEvents) && reader) e->ops[SockOp::kRead]->on_ready();
  if (closed()) return;
  e = &entries_[static_cast<std::size_t>(fd)];
  if ((events & kWriteEvents) && writer && e->ops[SockOp::kWrite] != nullptr) e->ops[SockOp::kWrite]->on_ready();
  if (closed()) return;
  // Level-triggered: a side reported while nobody waited on it would be
  // reported again at every poll, so it leaves the set's interest (a
  // transport may own the socket by now; the next wait brings it back).
  // A side whose waiter took the event stays: its next wait is free.
  std::uint32_t idle = 0;
  if ((events & kReadInterest) && !reader) idle |= kReadInterest;
  if ((events & kWriteInterest) && !writer) idle |= kWriteInterest;
  if ((events & (EPOLLHUP | EPOLLERR)) && !reader && !writer) idle = kReadInterest | kWriteInterest;
  if (idle == 0) return;
  e = &entries_[static_cast<std::size_t>(fd)];
  set_interest(fd, *e, (e->interest & ~idle) | wanted(*e), false);
}

void SockWaits::on_close() noexcept {
  // The owners hear nothing: they cancel or drop their operations
  // themselves when the loop closes.
  for (Entry& e : entries_) {
    for (SockOp*& op : e.ops) {
      if (op != nullptr) op->fd_ = -1;
      op = nullptr;
    }
  }
  waiting_ = 0;
  uv_poll_stop(&poll_);
}

void SockWaits::after_fork() {
  if (closed()) return;
  int fresh = ::epoll_create1(EPOLL_CLOEXEC);
  if (fresh < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
  // Same number: libuv re-registers the poll handle by fd after its fork.
  if (::dup3(fresh, epfd_, O_CLOEXEC) < 0) {
    int err = errno;
    ::close(fresh);
    throw std::system_error(err, std::generic_category(), "dup3");
  }
  ::close(fresh);
  for (std::size_t fd = 0; fd < entries_.size(); ++fd) {
    Entry& e = entries_[fd];
    e.interest = 0;
    if (wanted(e) != 0) set_interest(static_cast<int>(fd), e, wanted(e), true);
  }
}

}  // namespace shardloop
