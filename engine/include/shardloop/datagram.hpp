// A datagram socket (UDP, AF_UNIX SOCK_DGRAM) on a loop: the engine under
// Python's datagram transport. Readiness comes from a libuv poll handle on
// both I/O backends (UDP stays off the ring); the reads and sends are made
// here, in batches:
//  - reading: on readable, recvmmsg() fills up to a batch of slots in the
//    loop's datagram arena, and each datagram reaches the owner with its
//    source address; a bounded number of batches per wake, so one busy
//    socket cannot starve the loop (epoll is level-triggered: the rest
//    comes on the next iteration);
//  - sending: a datagram goes straight to the kernel while nothing is
//    queued; one the kernel refuses for now (EAGAIN) is copied to the queue,
//    which leaves in order, by sendmmsg(), once the socket is writable.
#pragma once

#include <uv.h>

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <deque>
#include <string>

#include "shardloop/polled_handle.hpp"

namespace shardloop {

class Datagram final : public PolledHandle {
 public:
  struct Callbacks {
    void* ctx = nullptr;
    // One datagram (valid during the call only) from `addr` (`addrlen` 0:
    // the kernel gave no address).
    void (*on_datagram)(void* ctx, const char* data, std::size_t len, const sockaddr* addr,
                        socklen_t addrlen) noexcept = nullptr;
    // A receive failed (negative errno: an ICMP error such as ECONNREFUSED
    // on a connected socket); reading goes on.
    void (*on_recv_error)(void* ctx, int err) noexcept = nullptr;
    // Queued datagrams left (status 0), or the oldest one failed (negative
    // errno) and was dropped; `queued` datagrams remain.
    void (*on_write)(void* ctx, int status, std::size_t queued) noexcept = nullptr;
    // The socket closed (by its owner or by the loop closing): no callback
    // follows.
    void (*on_close)(void* ctx) noexcept = nullptr;
  };

  // Datagrams read per recvmmsg()/sendmmsg() call, and at most this many
  // calls per wake: reading goes on while the kernel has datagrams (replies
  // sent from this batch bring the next requests), as libuv's UDP handles
  // read until EAGAIN; the cap keeps other handles' turn.
  static constexpr int kBatch = 32;
  static constexpr int kBatchesPerWake = 8;
  // The largest datagram read, as asyncio's transports read (longer ones
  // are cut there, as recvfrom(256 KiB) cuts them). IP sockets use 64 KiB
  // slots instead: no UDP datagram is longer.
  static constexpr std::size_t kMaxDatagram = 256 * 1024;
  static constexpr std::size_t kIpSlot = 64 * 1024;

  // Takes ownership of `fd` (closed on failure too). Throws
  // std::system_error, or std::logic_error for a closed loop.
  static Datagram* open(Loop& loop, int fd, const Callbacks& callbacks);

  // 0, or UV_EBADF once closed.
  int read_start();
  int read_stop();
  // `addr` null: the connected peer. Returns 0 when the datagram was sent
  // or queued (queued() says which), or the negative errno the kernel gave
  // at once (the datagram is dropped, as asyncio drops it).
  int send(const char* data, std::size_t len, const sockaddr* addr, socklen_t addrlen);

  std::size_t queued() const noexcept { return queue_.size(); }
  std::size_t queued_bytes() const noexcept { return queued_bytes_; }
  bool reading() const noexcept { return reading_; }
  int fd() const noexcept { return fd_; }

 private:
  struct Packet {
    std::string data;
    sockaddr_storage addr;
    socklen_t addrlen;
  };

  Datagram(Loop& loop, int fd, const Callbacks& callbacks, std::size_t slot);
  ~Datagram() override;
  void on_close() noexcept override;
  void close_handle() noexcept override;

  void watch() noexcept;
  void handle_poll_events(int status, int events) noexcept override;
  void readable() noexcept;
  bool deliver_held() noexcept;
  void flush() noexcept;

  Callbacks callbacks_;
  std::deque<Packet> queue_;  // refused by the kernel, sent in order
  std::deque<Packet> held_;   // read in a batch after the owner paused reading
  std::size_t queued_bytes_ = 0;
  std::size_t slot_;  // bytes per received datagram in the arena
  int fd_;
  int watching_ = 0;  // the poll events asked of libuv
  bool reading_ = false;
};

}  // namespace shardloop
