// One event loop on one libuv loop, with asyncio's scheduling rules:
// a FIFO ready queue run in batches (work queued while a batch runs waits for
// the next iteration), timers ordered by deadline then scheduling order and
// never run early, and a lock-free inbox for other threads.
#pragma once

#include <uv.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/owned_handle.hpp"
#include "shardloop/ring_queue.hpp"
#include "shardloop/timer_heap.hpp"
#include "shardloop/work.hpp"

namespace shardloop {

class Inbox;
class Ring;

// How a loop's streams reach the kernel (see stream.hpp).
enum class IoBackend { kEpoll, kIoUring };

// Counts of what a loop's streams asked of the kernel and handed to their
// owners: plain increments on the loop's thread, for tests (which path a
// feature took) and for explaining benchmarks by counting rather than
// timing. The ring's fields stay 0 on epoll.
struct IoStats {
  std::uint64_t deliveries = 0;       // on_read calls with data
  std::uint64_t delivered_bytes = 0;
  std::uint64_t reads = 0;            // epoll: read(2) calls
  std::uint64_t direct_sends = 0;     // send(2) from write() with nothing queued
  std::uint64_t flushes = 0;          // ring: flush() calls (about one per iteration)
  std::uint64_t enters = 0;           // ring: io_uring_enter calls
  std::uint64_t cqes = 0;             // ring: completions taken off the ring
  std::uint64_t recv_cqes = 0;        // ring: recv completions carrying data
  std::uint64_t recv_enobufs = 0;     // ring: recv ended for want of a provided buffer
  std::uint64_t recv_rearms = 0;      // ring: multishot recv armed again after it ended
  std::uint64_t send_sqes = 0;        // ring: send operations submitted
  std::uint64_t short_sends = 0;      // ring: sends the kernel took only part of
  std::uint64_t accept_cqes = 0;      // ring: connections multishot accept took
  std::uint64_t connect_sqes = 0;     // ring: connects submitted (IORING_OP_CONNECT)
  std::uint64_t buffers = 0;          // ring: provided buffers in the pool now
};

class Loop {
 public:
  // How an embedder (the Python binding) learns when the loop blocks.
  struct Hooks {
    void* ctx = nullptr;
    // Around the kernel wait, so the binding can release the GIL for exactly
    // that long: taken back once per iteration, never once per callback.
    void (*before_wait)(void* ctx) = nullptr;
    void (*after_wait)(void* ctx) = nullptr;
    // A signal was written to the wakeup fd (see signal_wakeup_fd()).
    void (*on_signal)(void* ctx) = nullptr;
    // The clock due timers are judged by (nullptr: CLOCK_MONOTONIC). asyncio's
    // _run_once asks self.time(), so code that replaces loop.time (a
    // subclass, mock.patch, a virtual clock) moves timers; the Python
    // binding answers with it then. Must not throw.
    double (*now)(void* ctx) = nullptr;
  };

  // A source of work outside the loop (the Runtime's cross-shard queues),
  // polled by the loop thread itself so that senders need no syscall while
  // the loop is awake.
  struct Feeder {
    void* ctx = nullptr;
    // Once per iteration, after the poll and the inbox: runs what arrived.
    void (*drain)(void* ctx) noexcept = nullptr;
    // Right before the loop would block: publishes "asleep" and returns true
    // when work arrived meanwhile (the poll then does not block).
    bool (*sleep)(void* ctx) noexcept = nullptr;
    // Optional, before `sleep`, with the embedder's wait begun (the GIL
    // released): may watch for work a while instead of blocking, never past
    // `until` (a time() value: the next timer's deadline, +inf when none).
    // Returns true to have the loop poll without blocking (and come back).
    bool (*idle)(void* ctx, double until) noexcept = nullptr;
  };

  enum class Exit { stopped, aborted };

  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  uv_loop_t* uv() noexcept { return &uv_; }
  double time() const noexcept;

  // Loop thread only.
  void call_soon(Work work) {
    if (inbox_pending_->load(std::memory_order_acquire)) drain_inbox();
    push_ready(work);
  }
  void call_soon(std::function<void()> fn) { call_soon(make_work(std::move(fn))); }
  // Loop thread only, from a libuv I/O callback that only reports readiness
  // (add_reader/add_writer): `work` joins this iteration's batch after what
  // was ready before the poll and before the due timers, as asyncio's
  // select() appends its handles; what it schedules waits for the next one.
  void call_io(Work work) {
    if (is_closed()) throw std::logic_error("Event loop is closed");
    io_ready_.push_back(work);
  }
  // `node->work` runs once `when` (a time() value) has passed. The loop does
  // not own the node; cancel() takes it back before its deadline.
  void schedule(TimerNode* node, double when);
  void cancel(TimerNode* node) noexcept;

  // Any thread. Returns false, leaving `work` with the caller, once the loop
  // is closed.
  bool call_soon_threadsafe(Work work);
  bool call_soon_threadsafe(std::function<void()> fn);
  // call_soon_threadsafe() for an embedder with a lock of its own (the GIL)
  // that the caller holds, and that the loop holds whenever it touches its
  // queues, giving it up only between Hooks::before_wait and after_wait,
  // and that close() is called under: the lock orders the push against
  // close() and the drains, which saves the writer gate's two locked
  // instructions and the flag's exchange per push.
  bool call_soon_threadsafe_locked(Work work);

  // Runs iterations until stop() (after the iteration that saw it) or
  // abort() (right after the callback that called it). Whatever way it
  // returns or throws, the loop is no longer running afterwards.
  Exit run();
  void run_once();
  void stop() noexcept { stopping_ = true; }
  // Only inside run(): outside it there is no run to end, and a flag left
  // up would end the next run after one iteration.
  void abort() noexcept {
    if (running_) aborting_ = true;
  }
  // Any thread (e.g. a close() from another thread must see it).
  bool is_running() const noexcept { return running_.load(std::memory_order_relaxed); }
  bool is_closed() const noexcept { return closed_.load(std::memory_order_acquire); }
  // Any thread: whether call_soon_threadsafe() work is (about to be) queued.
  bool inbox_pending() const noexcept { return inbox_pending_->load(std::memory_order_acquire); }

  // Discards pending work (each Work's fn is called with run=false), closes
  // every handle and the libuv loop. Throws std::logic_error while running.
  void close();

  void set_hooks(const Hooks& hooks) noexcept;
  // Loop thread (or before the loop runs). An empty Feeder removes it.
  void set_feeder(const Feeder& feeder) noexcept { feeder_ = feeder; }
  // Any thread, while the loop is open: ends a blocking poll.
  // Any thread, even once the loop is closed (then it does nothing): a
  // runtime abandoned by a shard (Runtime::abandon) may still wake it.
  void wake() noexcept;
  // Libuv callbacks that may call into the embedder call this first: it
  // ends the wait (retaking the GIL) if the loop was blocked.
  void resume() noexcept {
    if (waiting_) {
      waiting_ = false;
      call_hook(hooks_.after_wait);
    }
  }

  // Write end of a non-blocking socketpair the loop watches; bytes written
  // there (by a signal handler) wake the loop and call Hooks::on_signal.
  int signal_wakeup_fd();
  // Bytes read from the wakeup fd are also written to `fd` (-1: none), for
  // the wakeup fd the loop displaced while it runs: its owner still hears
  // of every signal. Loop thread.
  void set_signal_forward_fd(int fd) noexcept { signal_forward_fd_ = fd; }
  // The bytes read from the wakeup fd since the last call: CPython's signal
  // handler writes one per signal caught, its number. asyncio's
  // add_signal_handler dispatches on these (not on which Python-level
  // handler is installed), so the Python binding takes them in
  // Hooks::on_signal. At most kMaxSignalsRead are kept between two calls; a
  // flood beyond that is dropped, as a full wakeup socket drops it. Loop thread.
  std::string take_signals();
  static constexpr std::size_t kMaxSignalsRead = 256;
  // In a child process after fork(): the loop gets its own epoll instance,
  // async eventfd and signal socketpair. What it inherited is shared with
  // the parent, so an epoll_ctl(DEL) at close() would remove the parent's
  // registrations, and a signal byte read here would be taken from it.
  void after_fork();

  // Where exceptions thrown by C++ work go (default: stderr).
  void set_error_handler(std::function<void(std::exception_ptr)> handler) {
    error_handler_ = std::move(handler);
  }
  void report_error(std::exception_ptr error) noexcept;
  // The loop running on this thread, if any.
  static Loop* current() noexcept;
  static void report_on_current(std::exception_ptr error) noexcept;

  // Visits queued work and scheduled timers (not the inbox): lets an
  // embedder's garbage collector see what the loop keeps alive.
  template <typename F>
  void for_each_pending(F&& f) const {
    ready_.for_each([&](const Work& work) { f(work); });
    io_ready_.for_each([&](const Work& work) { f(work); });
    timers_.for_each([&](const TimerNode& node) { f(node.work); });
  }

  // Before the loop first runs. kIoUring: the loop sets up its ring on the
  // thread that first runs it (the ring then belongs to that thread).
  // Checked now with a real ring: when this process cannot have one,
  // `strict` throws std::system_error naming the cause (ENOSYS, EPERM from
  // io_uring_disabled or a seccomp filter, ENOMEM, EOPNOTSUPP for a missing
  // opcode); otherwise the loop stays on epoll, returns false and
  // io_fallback_reason() says why.
  bool set_io_backend(IoBackend backend, bool strict = false);
  IoBackend io_backend() const noexcept { return want_ring_ ? IoBackend::kIoUring : IoBackend::kEpoll; }
  const std::string& io_fallback_reason() const noexcept { return io_fallback_; }
  // The ring, once the loop has run on its thread (io_uring backend only).
  Ring* ring() const noexcept { return ring_.get(); }
  IoStats& io_stats() noexcept { return io_stats_; }
  // Iterations begun so far (run_once calls): lets an owner tell whether
  // two callbacks came from the same poll.
  std::uint64_t iteration() const noexcept { return iterations_; }

  // One read buffer per loop, shared by its streams: a read callback
  // consumes the bytes before the next read starts, and one buffer stays
  // in cache where one per connection would not.
  static constexpr std::size_t kReadBufferSize = 256 * 1024;
  char* read_buffer() { return read_buffer_ ? read_buffer_.get() : make_read_buffer(); }
  // The receive arena of the loop's datagram sockets (Datagram): one
  // recvmmsg batch lands here and is delivered before the next starts.
  // Allocated on first use; pages a batch never reaches are never touched.
  static constexpr std::size_t kDatagramArenaSize = 2 * 1024 * 1024;
  char* datagram_arena() { return datagram_arena_ ? datagram_arena_.get() : make_datagram_arena(); }

  std::size_t ready_count() const noexcept { return ready_.size() + io_ready_.size(); }
  std::size_t timer_count() const noexcept { return timers_.size(); }

 private:
  friend class OwnedHandle;
  void adopt(OwnedHandle* handle) noexcept;
  void disown(OwnedHandle* handle) noexcept;

  // libuv callbacks: C frames are below them, so nothing may leave them.
  static void on_prepare(uv_prepare_t* handle) noexcept;
  static void on_check(uv_check_t* handle) noexcept;
  static void on_async(uv_async_t* handle) noexcept;
  static void on_signal_readable(uv_poll_t* handle, int status, int events) noexcept;
  // An embedder's hook; what it throws goes to report_error().
  void call_hook(void (*hook)(void*)) noexcept;

  char* make_read_buffer();
  char* make_datagram_arena();
  void start_ring();
  void push_ready(Work work);
  bool must_poll() noexcept;
  void arm_deadline(bool& block);
  void run_due_timers(double now, std::uint64_t limit);
  bool run_io(std::size_t n);
  void drain_inbox();
  void discard_pending() noexcept;

  uv_loop_t uv_{};
  uv_prepare_t prepare_{};
  uv_check_t check_{};
  uv_async_t async_{};
  uv_timer_t deadline_{};
  uv_idle_t idle_{};  // started to keep a poll from blocking when work is ready
  uv_poll_t signal_poll_{};
  int signal_fds_[2] = {-1, -1};
  int signal_forward_fd_ = -1;
  unsigned char signals_read_[kMaxSignalsRead] = {};
  std::size_t signals_read_count_ = 0;

  RingQueue<Work> ready_;
  RingQueue<Work> io_ready_;  // call_io(): this iteration's readiness callbacks
  TimerHeap timers_;
  std::vector<TimerNode*> set_aside_;
  std::unique_ptr<char[]> read_buffer_;
  std::unique_ptr<char[]> datagram_arena_;
  std::unique_ptr<Inbox> inbox_;
  std::unique_ptr<Ring> ring_;
  std::unique_ptr<Ring> orphaned_ring_;  // inherited through fork (after_fork)
  std::thread::id ring_thread_{};
  std::string io_fallback_;
  IoStats io_stats_;
  bool want_ring_ = false;
  // The inbox's flag, raised by every push: lets the loop thread pull inbox
  // work ahead of its own call_soon, so work another thread queued first
  // runs first. A pointer so that the inline call_soon needs no Inbox.
  const std::atomic<bool>* inbox_pending_;
  // Up while the loop may block in the kernel: only then does a cross-thread
  // push pay for a uv_async_send (a write syscall and a wake-up).
  std::atomic<bool> sleeping_{false};

  OwnedHandle* owned_ = nullptr;  // intrusive list of open engine handles
  Hooks hooks_{};
  double clock_now() const noexcept;  // Hooks::now, else CLOCK_MONOTONIC
  Feeder feeder_{};
  std::function<void(std::exception_ptr)> error_handler_;
  std::atomic<bool> running_{false};
  bool stopping_ = false;
  bool aborting_ = false;
  bool block_ = false;
  std::uint64_t last_poll_ms_ = 0;  // uv_now() after the last poll
  std::uint64_t iterations_ = 0;
  bool waiting_ = false;
  std::atomic<bool> closed_{false};
};

}  // namespace shardloop
