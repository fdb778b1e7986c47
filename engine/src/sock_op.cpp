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

// Everything a waiter can be told about; the set reports all of it, so a
// socket's registration serves readers and writers alike.
constexpr std::uint32_t kEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr std::uint32_t kReadEvents = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
constexpr std::uint32_t kWriteEvents = EPOLLOUT | EPOLLHUP | EPOLLERR;
// Events taken off the set per wake-up; the rest stay queued in the kernel
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

int SockWaits::add(int fd) noexcept {
  epoll_event ev{};
  ev.events = kEvents;
  ev.data.u64 = static_cast<std::uint64_t>(fd);
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) == 0) {
    ++registrations_;
    return 0;
  }
  // Already in the set under this number and file: the registration stands.
  return errno == EEXIST ? 0 : errno;
}

// Re-evaluates a registered socket: the kernel queues an event if it is
// ready now, edge or not.
int SockWaits::modify(int fd) noexcept {
  epoll_event ev{};
  ev.events = kEvents;
  ev.data.u64 = static_cast<std::uint64_t>(fd);
  if (::epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0) return 0;
  return errno == ENOENT ? add(fd) : errno;  // the socket left the set meanwhile
}

void SockWaits::rearm(int fd) noexcept {
  if (closed() || fd < 0 || static_cast<std::size_t>(fd) >= entries_.size()) return;
  Entry& e = entries_[static_cast<std::size_t>(fd)];
  e.registered = modify(fd) == 0;
}

SockOp* SockWaits::wait(SockOp* op, int fd, SockOp::Side side, bool fresh, bool level) {
  if (closed()) throw std::logic_error("Event loop is closed");
  if (fd < 0) throw std::system_error(EBADF, std::generic_category(), "epoll_ctl");
  if (static_cast<std::size_t>(fd) >= entries_.size()) entries_.resize(static_cast<std::size_t>(fd) + 1);
  Entry& e = entries_[static_cast<std::size_t>(fd)];
  if (fresh || !e.registered) {
    if (int err = add(fd)) throw std::system_error(err, std::generic_category(), "epoll_ctl");
    e.registered = true;
  } else if (level) {
    if (int err = modify(fd)) throw std::system_error(err, std::generic_category(), "epoll_ctl");
  }
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
  if (e->ops[0] == nullptr && e->ops[1] == nullptr) {
    // Nobody waits on this socket any more (a transport may own it now):
    // leave the set rather than be woken for each of its packets. The
    // next wait registers it again.
    if (e->registered) {
      ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
      e->registered = false;
    }
    return;
  }
  if ((events & kReadEvents) && e->ops[SockOp::kRead] != nullptr) e->ops[SockOp::kRead]->on_ready();
  if (closed()) return;
  e = &entries_[static_cast<std::size_t>(fd)];
  if ((events & kWriteEvents) && e->ops[SockOp::kWrite] != nullptr) e->ops[SockOp::kWrite]->on_ready();
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
    e.registered = false;
    if (e.ops[0] != nullptr || e.ops[1] != nullptr) e.registered = add(static_cast<int>(fd)) == 0;
  }
}

}  // namespace shardloop
