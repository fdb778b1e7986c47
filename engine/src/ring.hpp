// The io_uring backend's ring: one per loop, made on the loop's thread when
// it first runs. Operations are prepared while callbacks run and submitted
// together right before the loop waits, with the completions the kernel
// has ready fetched by the same io_uring_enter. The ring's eventfd sits in
// the loop's epoll set, so a completion wakes a sleeping loop like any
// other I/O; timers, signals and everything else stay on libuv.
#pragma once

#include <liburing.h>
#include <sys/uio.h>
#include <uv.h>

#include <cstdint>
#include <string>
#include <vector>

#include "shardloop/ring_client.hpp"

namespace shardloop {

class Loop;
class Stream;

class Ring {
 public:
  // Provided buffers for multishot recv: a completion names the buffer the
  // kernel filled; it goes back to the kernel once the owner has read it.
  // 64 KiB: a 100 KiB message takes two recvs (16 KiB took seven). The
  // pool starts at 2 MiB, which stays in cache (the kernel writes each
  // posted buffer once per lap of the ring, and at 16 MiB that lap cost
  // the server and the peer on the same machine CPU per request: see
  // docs/performance.md), and doubles up to 16 MiB when recvs keep
  // finding it empty (flush()).
  static constexpr unsigned kBuffers = 256;
  static constexpr unsigned kInitialBuffers = 32;
  static constexpr unsigned kBufferSize = 64 * 1024;
  static constexpr unsigned kEntries = 1024;
  // Most completions delivered together (they fill the loop's read buffer).
  static constexpr int kMaxParts = static_cast<int>((256 * 1024) / kBufferSize);

  // Throws std::system_error naming the call and cause that failed.
  explicit Ring(Loop& loop);
  ~Ring();
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // Whether this process can set up a ring the way Ring does (and has the
  // opcodes it uses); throws std::system_error naming the cause if not.
  static void probe();
  // Which setup flags this kernel took, e.g. "SINGLE_ISSUER|DEFER_TASKRUN".
  const std::string& setup() const noexcept { return setup_name_; }

  // An SQE for `stream`'s operation `op`; submits first when the queue is
  // full. The stream counts the operation in flight until its last
  // completion has been dispatched.
  io_uring_sqe* sqe(Stream* stream, unsigned op) noexcept { return sqe(tag(stream, op)); }
  // An SQE whose completion carries `user_data` (kIgnore: counted only).
  io_uring_sqe* sqe(std::uint64_t user_data) noexcept;
  // Tags: the owner's address and, in the low 3 bits, the op: Stream's
  // ops 1-6, or kClient, whose address is a RingClient's (an Acceptor's,
  // a Connector's), which takes the completion itself.
  static constexpr unsigned kClient = 7;
  static constexpr std::uint64_t kIgnore = 0;
  // Hands what is queued to the kernel now, from inside a callback (the
  // completions it produces are dispatched by the next flush).
  void submit_now() noexcept;
  // abandon()ed or orphan()ed: nothing submitted will ever complete.
  bool detached() const noexcept { return orphaned_ || exited_; }
  void nop(Stream* stream, unsigned op) noexcept { io_uring_prep_nop(sqe(stream, op)); }
  static std::uint64_t tag(const void* owner, unsigned op) noexcept {
    return reinterpret_cast<std::uintptr_t>(owner) | op;
  }
  // The tag of `client`'s operations: the address of its RingClient base,
  // which dispatch() calls (not that of the object deriving from it).
  static std::uint64_t client_tag(const RingClient* client) noexcept { return tag(client, kClient); }
  static_assert(alignof(RingClient) > kClient, "the op fits below a RingClient's address");

  // The stream has bytes to send: its send is prepared in the next flush.
  void mark_dirty(Stream* stream);
  const char* buffer(unsigned bid) const noexcept { return bufs_ + std::size_t(bid) * kBufferSize; }
  void recycle(unsigned bid) noexcept;
  // A recv found no buffer (ENOBUFS): counted for flush()'s growth rule.
  void starved() noexcept { ++starved_; }
  unsigned posted_buffers() const noexcept { return posted_; }

  // Prepares the dirty streams' sends, submits everything and dispatches
  // the completions that are ready. Loop thread; true when the loop should
  // not block: completions were dispatched (callbacks ran), or the kernel
  // refused the submission (EBUSY, EAGAIN) and the next flush retries it.
  bool flush() noexcept;
  // Operations in flight or sends waiting: the loop must go through a
  // poll (where flush() runs) rather than skip it.
  bool busy() const noexcept;
  // At loop close: waits until no operation is in flight (after
  // abandon(): closes every stream's fd at once).
  void drain() noexcept;
  // At loop close on a thread other than the ring's, which the kernel
  // refuses to take submissions or waits from (SINGLE_ISSUER: EEXIST),
  // before the streams close: the ring is torn down, which cancels what it
  // had in flight; operations are then prepared into a scratch entry.
  void abandon() noexcept;
  // Streams whose fd is still open on this ring (linked through
  // Stream::ring_prev/ring_next), for abandon().
  void link(Stream* stream) noexcept;
  void unlink(Stream* stream) noexcept;
  // In a fork child: the ring's memory is shared with the parent, so this
  // process must never submit to it or reap from it again. Operations are
  // then prepared into a scratch entry and never complete: a stream closed
  // in the child keeps its memory (the child usually execs or exits).
  void orphan() noexcept;
  // Submissions (io_uring_enter calls) so far: for tests and benchmarks.
  std::uint64_t enters() const noexcept { return enters_; }

 private:
  static void on_event(uv_poll_t* handle, int status, int events);
  static void probe_once();
  int submit(bool wait) noexcept;
  void harvest() noexcept;
  bool dispatch() noexcept;
  std::size_t gather(std::size_t first) noexcept;
  void release() noexcept;
  void post_buffers(unsigned n) noexcept;

  struct Completion {
    std::uint64_t user_data;
    int res;
    unsigned flags;
  };

  Loop& loop_;
  io_uring ring_{};
  io_uring_buf_ring* br_ = nullptr;
  char* bufs_ = nullptr;
  int efd_ = -1;
  uv_poll_t poll_{};
  std::vector<Stream*> dirty_;
  std::vector<Completion> cqes_;  // taken off the ring, not yet dispatched
  std::uint64_t live_ = 0;   // operations whose last completion is due
  std::uint64_t enters_ = 0;
  unsigned unsubmitted_ = 0;
  unsigned posted_ = 0;   // buffers [0, posted_) belong to the pool
  unsigned starved_ = 0;  // ENOBUFS completions in this flush
  std::string setup_name_;
  bool event_pending_ = false;
  bool orphaned_ = false;
  bool exited_ = false;  // io_uring_queue_exit done (abandon)
  Stream* streams_ = nullptr;
  io_uring_sqe scratch_{};
};

}  // namespace shardloop
