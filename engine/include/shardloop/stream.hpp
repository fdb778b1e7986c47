// A connected byte stream (TCP socket, Unix socket, pipe): the one stream
// engine under Python's transports and the C++ API's connections. One read
// path, one write queue, one close path, on either of the loop's two I/O
// backends:
//  - epoll: readiness from a libuv poll handle, read/send made here; a
//    write goes straight to the kernel while nothing is queued;
//  - io_uring (when the loop has a ring, see Loop::io_backend()): a
//    multishot recv into the loop's provided-buffer ring, and what one
//    iteration wrote leaves as one send, submitted with every other stream's
//    in the loop's one io_uring_enter before it waits.
// The backend is chosen when the stream opens and never changes.
#pragma once

#include <uv.h>

#include <cstddef>
#include <string>
#include <sys/types.h>

#include "shardloop/polled_handle.hpp"

namespace shardloop {

class Ring;

class Stream final : public PolledHandle {
 public:
  struct Callbacks {
    void* ctx = nullptr;
    // nread > 0: data (valid during the call only); UV_EOF: the peer shut
    // down its side; < 0: a read error (negative errno), reading stops.
    void (*on_read)(void* ctx, const char* data, ssize_t nread) noexcept = nullptr;
    // Queued bytes went out (status < 0: sending failed; the stream stays
    // open for its owner to close); `queued` bytes remain.
    void (*on_write)(void* ctx, int status, std::size_t queued) noexcept = nullptr;
    // shutdown() finished (status < 0: it failed). Never from inside shutdown().
    void (*on_shutdown)(void* ctx, int status) noexcept = nullptr;
    // The stream closed (by its owner or by the loop closing): no callback
    // follows.
    void (*on_close)(void* ctx) noexcept = nullptr;
  };

  enum class Kind { kSocket, kPipe };

  // Takes ownership of `fd` (closed on failure too). Throws
  // std::system_error, or std::logic_error for a closed loop.
  static Stream* open(Loop& loop, int fd, const Callbacks& callbacks, Kind kind = Kind::kSocket);

  // These return 0 or a negative libuv error code (UV_EBADF once closed,
  // UV_EPIPE for a write after shutdown()).
  int read_start();
  int read_stop();
  // Bytes the kernel does not take at once are copied and sent in order.
  int write(const char* data, std::size_t len);
  // Sends what is queued, then shuts down the write side (on_shutdown).
  // With nothing queued it shuts down at once: a failure is returned (and
  // on_shutdown is not called), success is still reported by on_shutdown.
  int shutdown();

  std::size_t queued() const noexcept { return (sending_.size() - sent_) + out_.size(); }
  bool reading() const noexcept { return reading_; }
  bool uses_ring() const noexcept { return ring_ != nullptr; }
  int fd() const noexcept { return fd_; }

  // Ring completions (io_uring backend; called by Ring only).
  enum Op : unsigned { kRecv = 1, kSend = 2, kShutdown = 3, kCancel = 4, kClose = 5, kResume = 6 };
  void on_completion(unsigned op, int res, unsigned flags, const char* data = nullptr) noexcept;
  // Ring: turns what this iteration wrote into one send SQE.
  void submit_send() noexcept;
  // Ring::abandon(): the ring is gone with whatever was in flight; the fd
  // is closed now.
  void abandon_ring() noexcept;
  bool send_dirty = false;
  Stream* ring_prev = nullptr;  // Ring's list of its open streams
  Stream* ring_next = nullptr;

 private:
  Stream(Loop& loop, int fd, const Callbacks& callbacks, Kind kind);
  ~Stream() override;
  void on_close() noexcept override;
  void close_handle() noexcept override;

  // Shared by both backends.
  void deliver(const char* data, ssize_t n) noexcept;
  void report_write(int status) noexcept;
  void finish_shutdown(int status) noexcept;
  void compact() noexcept;

  // epoll backend (backend_epoll.cpp).
  int epoll_open();
  void epoll_watch() noexcept;
  int epoll_flush() noexcept;
  void epoll_readable(bool hangup) noexcept;
  void epoll_poll_error() noexcept;
  void handle_poll_events(int status, int events) noexcept override;

  // io_uring backend (backend_uring.cpp).
  void uring_arm_recv() noexcept;
  void uring_cancel_recv() noexcept;
  void uring_queue_send() noexcept;
  void uring_shutdown() noexcept;
  void uring_recv_done(int res, unsigned flags, const char* data) noexcept;
  void uring_send_done(int res) noexcept;
  void uring_deliver_held() noexcept;
  void uring_close() noexcept;
  bool held() const noexcept;

  Callbacks callbacks_;
  Ring* ring_ = nullptr;
  std::string sending_;  // bytes being sent; [0, sent_) already gone
  std::size_t sent_ = 0;
  std::string out_;      // bytes written after those, not yet handed to the kernel
  std::string held_;     // io_uring: data the kernel delivered after read_stop()
  int held_status_ = 0;  // io_uring: EOF or an error that came after read_stop()
  int shutdown_status_ = 0;  // what shutdown(2) returned, reported later (shutdown_sent_)
  int fd_;
  int watching_ = 0;  // epoll: the poll events asked of libuv
  int inflight_ = 0;  // io_uring: operations whose completion is still due
  Kind kind_;
  bool reading_ = false;
  bool recv_armed_ = false;     // io_uring: a multishot recv is in the kernel
  bool send_inflight_ = false;  // io_uring: a send SQE is in the kernel
  bool shutdown_pending_ = false;  // shut down once the queue is sent
  bool shutdown_sent_ = false;     // shutdown(2) done, on_shutdown not yet called
  bool write_closed_ = false;
  bool write_failed_ = false;
  bool resume_queued_ = false;
};

}  // namespace shardloop
