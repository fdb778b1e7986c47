// Datagram sockets: readiness from a libuv poll handle, datagrams read with
// recvmmsg() into the loop's arena and sent with sendto()/sendmmsg().
#include "shardloop/datagram.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>
#include <system_error>

#include "shardloop/loop.hpp"

namespace shardloop {

namespace {

bool would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

static_assert(Loop::kDatagramArenaSize >= Datagram::kBatch * Datagram::kIpSlot);
static_assert(Loop::kDatagramArenaSize >= Datagram::kMaxDatagram);

}  // namespace

Datagram::Datagram(Loop& loop, int fd, const Callbacks& callbacks, std::size_t slot)
    : PolledHandle(loop), callbacks_(callbacks), slot_(slot), fd_(fd) {}

Datagram::~Datagram() = default;

Datagram* Datagram::open(Loop& loop, int fd, const Callbacks& callbacks) {
  auto fail = [fd](int err, const char* what) {
    ::close(fd);
    throw std::system_error(err, std::generic_category(), what);
  };
  if (loop.is_closed()) {
    ::close(fd);
    throw std::logic_error("Event loop is closed");
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || (!(flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)) fail(errno, "fcntl");
  // No UDP datagram is longer than 64 KiB, so IP sockets read a full batch
  // per call; others (AF_UNIX) may carry up to asyncio's 256 KiB each.
  int domain = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) fail(errno, "getsockopt");
  const bool ip = domain == AF_INET || domain == AF_INET6;
  auto* self = new (std::nothrow) Datagram(loop, fd, callbacks, ip ? kIpSlot : kMaxDatagram);
  if (self == nullptr) {
    ::close(fd);
    throw std::bad_alloc();
  }
  int rc = self->poll_init(fd);
  if (rc != 0) {
    delete self;  // never a libuv handle: nothing for libuv to close
    fail(-rc, "uv_poll_init");
  }
  return self;
}

int Datagram::read_start() {
  if (closed()) return UV_EBADF;
  if (reading_) return 0;
  reading_ = true;
  // What a batch held back after a pause goes first, from the ready queue:
  // never from inside read_start() (the owner's resume_reading()).
  if (!held_.empty()) queue_events(UV_READABLE);
  watch();
  return 0;
}

int Datagram::read_stop() {
  if (closed()) return UV_EBADF;
  reading_ = false;
  watch();
  return 0;
}

int Datagram::send(const char* data, std::size_t len, const sockaddr* addr, socklen_t addrlen) {
  if (closed()) return UV_EBADF;
  if (queue_.empty()) {
    // Nothing may overtake a queued datagram; with none, the kernel first.
    ssize_t n;
    do n = addr ? ::sendto(fd_, data, len, MSG_NOSIGNAL, addr, addrlen) : ::send(fd_, data, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0) return 0;
    if (!would_block(errno)) return -errno;
  }
  try {
    Packet& p = queue_.emplace_back();
    p.addrlen = 0;
    try {
      p.data.assign(data, len);
    } catch (...) {
      queue_.pop_back();
      throw;
    }
    if (addr != nullptr) {
      std::memcpy(&p.addr, addr, std::min<std::size_t>(addrlen, sizeof p.addr));
      p.addrlen = std::min<socklen_t>(addrlen, sizeof p.addr);
    }
  } catch (const std::bad_alloc&) {
    return UV_ENOMEM;
  }
  queued_bytes_ += len;
  watch();
  return 0;
}

// Asks libuv for exactly the events there is something to do for.
void Datagram::watch() noexcept {
  if (closed()) return;
  const int events = (reading_ ? UV_READABLE : 0) | (queue_.empty() ? 0 : UV_WRITABLE);
  if (events == watching_) return;
  int rc = poll_watch(events);
  if (rc != 0) {
    // Only a bad fd gets here; say so where the owner listens.
    if (reading_) return callbacks_.on_recv_error(callbacks_.ctx, rc);
    return;
  }
  watching_ = events;
}

// Readiness, from the loop's I/O queue (PolledHandle).
void Datagram::handle_poll_events(int status, int events) noexcept {
  if (status < 0) {
    // libuv stops a poll handle that reports EPOLLERR (a pending ICMP
    // error). Reading or sending reports the socket's error itself, then
    // watching resumes for whatever is still wanted.
    watching_ = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  if ((events & UV_READABLE) && reading_) readable();
  if ((events & UV_WRITABLE) && !closed() && !queue_.empty()) flush();
  watch();
}

// Delivers what an earlier batch held back; false when the owner paused
// or closed again before they were all taken.
bool Datagram::deliver_held() noexcept {
  while (!held_.empty()) {
    if (!reading_ || closed()) return false;
    Packet p = std::move(held_.front());
    held_.pop_front();
    callbacks_.on_datagram(callbacks_.ctx, p.data.data(), p.data.size(),
                           p.addrlen ? reinterpret_cast<const sockaddr*>(&p.addr) : nullptr, p.addrlen);
  }
  return true;
}

void Datagram::readable() noexcept {
  if (!deliver_held()) return;
  char* arena;
  try {
    arena = loop_.datagram_arena();
  } catch (const std::bad_alloc&) {
    return callbacks_.on_recv_error(callbacks_.ctx, UV_ENOBUFS);
  }
  const int slots = static_cast<int>(std::min<std::size_t>(kBatch, Loop::kDatagramArenaSize / slot_));
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  sockaddr_storage addrs[kBatch];
  for (int batch = 0; batch < kBatchesPerWake; ++batch) {
    for (int i = 0; i < slots; ++i) {
      iovs[i] = {arena + i * slot_, slot_};
      msgs[i].msg_hdr = msghdr{};
      msgs[i].msg_hdr.msg_name = &addrs[i];
      msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_len = 0;
    }
    int n;
    do n = ::recvmmsg(fd_, msgs, static_cast<unsigned>(slots), 0, nullptr);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (!would_block(errno)) callbacks_.on_recv_error(callbacks_.ctx, -errno);
      return;
    }
    for (int i = 0; i < n; ++i) {
      const sockaddr* addr = reinterpret_cast<const sockaddr*>(&addrs[i]);
      const socklen_t addrlen = msgs[i].msg_hdr.msg_namelen;
      const std::size_t len = std::min<std::size_t>(msgs[i].msg_len, slot_);
      if (closed()) return;
      if (!reading_) {
        // Paused in the middle of a batch: the rest waits for read_start().
        try {
          Packet& p = held_.emplace_back();
          p.data.assign(arena + i * slot_, len);
          std::memcpy(&p.addr, addr, std::min<std::size_t>(addrlen, sizeof p.addr));
          p.addrlen = std::min<socklen_t>(addrlen, sizeof p.addr);
        } catch (const std::bad_alloc&) {
          // Dropped, as the kernel drops a datagram it has no room for.
        }
        continue;
      }
      callbacks_.on_datagram(callbacks_.ctx, arena + i * slot_, len, addrlen ? addr : nullptr, addrlen);
    }
    if (!reading_ || closed()) return;
  }
}

// Sends from the queue's head until the kernel refuses; a datagram that
// fails is dropped and reported, and the rest waits for the next writable
// event, as asyncio's transport stops at an error.
void Datagram::flush() noexcept {
  const std::size_t before = queue_.size();
  int status = 0;
  mmsghdr msgs[kBatch];
  iovec iovs[kBatch];
  for (int batch = 0; batch < kBatchesPerWake && !queue_.empty() && status == 0; ++batch) {
    const int count = static_cast<int>(std::min<std::size_t>(kBatch, queue_.size()));
    for (int i = 0; i < count; ++i) {
      Packet& p = queue_[static_cast<std::size_t>(i)];
      iovs[i] = {p.data.data(), p.data.size()};
      msgs[i].msg_hdr = msghdr{};
      msgs[i].msg_hdr.msg_name = p.addrlen ? &p.addr : nullptr;
      msgs[i].msg_hdr.msg_namelen = p.addrlen;
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_len = 0;
    }
    int n;
    do n = ::sendmmsg(fd_, msgs, static_cast<unsigned>(count), MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (would_block(errno)) break;
      status = -errno;
      n = 1;  // the head failed: dropped
    }
    for (int i = 0; i < n; ++i) {
      queued_bytes_ -= queue_.front().data.size();
      queue_.pop_front();
    }
    if (n < count) break;  // the kernel took what it could; the rest later
  }
  if (status != 0 || queue_.size() != before) {
    watch();  // a sender that closes once the queue is empty may close here
    callbacks_.on_write(callbacks_.ctx, status, queue_.size());
  }
}

// However it closes, the owner hears of it first, while the fd is still
// ours (as Stream does).
void Datagram::on_close() noexcept {
  reading_ = false;
  queue_.clear();
  held_.clear();
  queued_bytes_ = 0;
  if (callbacks_.on_close) callbacks_.on_close(callbacks_.ctx);
}

void Datagram::close_handle() noexcept {
  close_poll();  // out of epoll now, then the fd goes
  ::close(fd_);
  fd_ = -1;
}

}  // namespace shardloop
