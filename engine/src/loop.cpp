#include "shardloop/loop.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>

#include "inbox.hpp"
#include "ring.hpp"
#include "shardloop/clock.hpp"

namespace shardloop {

namespace {

thread_local Loop* tls_current = nullptr;

void check_uv(int rc, const char* what) {
  if (rc != 0) throw std::runtime_error(std::string(what) + ": " + uv_strerror(rc));
}

void noop_timer(uv_timer_t*) noexcept {}

void print_error(std::exception_ptr error) noexcept {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardloop: unhandled exception in callback: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "shardloop: unhandled non-standard exception in callback\n");
  }
}

// Scoped marker of the loop running on this thread.
struct CurrentGuard {
  Loop* prev;
  explicit CurrentGuard(Loop* loop) : prev(tls_current) { tls_current = loop; }
  ~CurrentGuard() { tls_current = prev; }
};

}  // namespace

Loop::Loop() : inbox_(std::make_unique<Inbox>()), inbox_pending_(&inbox_->pending_flag()) {
  check_uv(uv_loop_init(&uv_), "uv_loop_init");
  uv_.data = this;
  prepare_.data = check_.data = async_.data = deadline_.data = idle_.data = signal_poll_.data = this;
  uv_prepare_init(&uv_, &prepare_);
  uv_prepare_start(&prepare_, &Loop::on_prepare);
  uv_unref(reinterpret_cast<uv_handle_t*>(&prepare_));
  uv_check_init(&uv_, &check_);  // started by set_hooks() when it is needed
  uv_unref(reinterpret_cast<uv_handle_t*>(&check_));
  uv_timer_init(&uv_, &deadline_);
  uv_idle_init(&uv_, &idle_);
  // The async handle stays referenced: it keeps the libuv loop alive, so an
  // iteration with nothing to do blocks like asyncio's run_forever does.
  uv_async_init(&uv_, &async_, &Loop::on_async);
}

Loop::~Loop() {
  try {
    close();
  } catch (...) {
    report_error(std::current_exception());
  }
}

double Loop::time() const noexcept { return monotonic_now(); }

double Loop::clock_now() const noexcept { return hooks_.now ? hooks_.now(hooks_.ctx) : monotonic_now(); }

Loop* Loop::current() noexcept { return tls_current; }

void Loop::report_error(std::exception_ptr error) noexcept {
  if (error_handler_) {
    try {
      error_handler_(error);
      return;
    } catch (...) {
      error = std::current_exception();
    }
  }
  print_error(error);
}

void Loop::report_on_current(std::exception_ptr error) noexcept {
  if (tls_current) {
    tls_current->report_error(error);
    return;
  }
  // Work discarded or run outside run(): no loop to ask, so say it here.
  print_error(error);
}

char* Loop::make_read_buffer() {
  read_buffer_.reset(new char[kReadBufferSize]);
  return read_buffer_.get();
}

char* Loop::make_datagram_arena() {
  datagram_arena_.reset(new char[kDatagramArenaSize]);
  return datagram_arena_.get();
}

void Loop::push_ready(Work work) {
  if (is_closed()) throw std::logic_error("Event loop is closed");
  ready_.push_back(work);
}

void Loop::schedule(TimerNode* node, double when) {
  if (is_closed()) throw std::logic_error("Event loop is closed");
  cancel(node);
  node->when = when;
  timers_.push(node);
}

void Loop::cancel(TimerNode* node) noexcept {
  if (node->heap_slot == TimerNode::kSetAside) {
    std::erase(set_aside_, node);
    node->heap_slot = TimerNode::kNotScheduled;
  } else if (node->scheduled()) {
    timers_.erase(node);
  }
}

bool Loop::call_soon_threadsafe(Work work) {
  // Writers announce themselves before checking `closed_`; close() sets
  // `closed_` and then waits for announced writers, so no push can land on
  // a queue that close() has already drained, nor touch a closed handle.
  if (tls_current == this) {
    // On the loop's own thread this is plain call_soon: queue order must
    // match call order, which a detour through the inbox would not keep.
    if (is_closed()) return false;
    call_soon(work);
    return true;
  }
  // Refused once close() began; throws std::bad_alloc rather than lose
  // the work.
  return inbox_->push(work, [this] {
    // Pairs with the fence in on_prepare: either the loop sees this work
    // before it sleeps, or this thread sees it asleep and wakes it.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_relaxed)) uv_async_send(&async_);
  });
}

bool Loop::call_soon_threadsafe_locked(Work work) {
  if (tls_current == this) {
    if (is_closed()) return false;
    call_soon(work);
    return true;
  }
  return inbox_->push_locked(work, [this] {
    // As in call_soon_threadsafe(): pairs with the fence in on_prepare.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sleeping_.load(std::memory_order_relaxed)) uv_async_send(&async_);
  });
}

void Loop::wake() noexcept {
  // Behind the inbox's gate, which close() shuts before the async handle
  // goes: libuv aborts on an async handle sent to after its loop closed.
  inbox_->if_open([this] { uv_async_send(&async_); });
}

bool Loop::call_soon_threadsafe(std::function<void()> fn) {
  Work work = make_work(std::move(fn));
  bool queued;
  try {
    queued = call_soon_threadsafe(work);
  } catch (...) {
    work.discard();  // the closure is ours again: freed, not leaked
    throw;
  }
  if (!queued) work.discard();
  return queued;
}

Loop::Exit Loop::run() {
  if (is_closed()) throw std::logic_error("Event loop is closed");
  if (running_) throw std::logic_error("This event loop is already running");
  if (want_ring_) start_ring();
  // stop() before run() is asyncio's "one iteration, then return" and is
  // kept; abort() only counts inside run() (see abort()).
  // Clears the run state on every way out, an exception included: a loop
  // left "running" could never run or close again.
  struct RunGuard {
    Loop* loop;
    ~RunGuard() {
      loop->running_.store(false, std::memory_order_relaxed);
      loop->stopping_ = loop->aborting_ = false;
    }
  };
  running_.store(true, std::memory_order_relaxed);
  RunGuard guard{this};
  for (;;) {
    run_once();
    if (aborting_) return Exit::aborted;
    if (stopping_) return Exit::stopped;
  }
}

void Loop::call_hook(void (*hook)(void*)) noexcept {
  if (hook == nullptr) return;
  // Hooks run inside libuv's callbacks, C frames nothing may unwind through.
  try {
    hook(hooks_.ctx);
  } catch (...) {
    report_error(std::current_exception());
  }
}

void Loop::arm_deadline(bool& block) {
  if (timers_.empty()) {
    uv_timer_stop(&deadline_);
    return;
  }
  double delay = timers_.top_when() - clock_now();
  if (delay <= 0) {
    block = false;
    return;
  }
  // Round up: waking early only costs a second wait, waking late is bounded
  // by the 1 ms the kernel's timeout resolution allows.
  // The heap never holds a NaN key (see TimerHeap::key), but a value that
  // does not fit must never reach the integer conversion (UB): written so
  // that NaN and +inf both take the bound.
  double ms = std::ceil(delay * 1e3);
  uint64_t timeout = ms <= 1e15 ? static_cast<uint64_t>(ms) : uint64_t(1e15);
  uv_update_time(&uv_);
  uv_timer_start(&deadline_, &noop_timer, timeout, 0);
}

void Loop::run_once() {
  CurrentGuard guard(this);
  ++iterations_;
  if (uv_is_active(reinterpret_cast<uv_handle_t*>(&idle_))) uv_idle_stop(&idle_);
  block_ = ready_.empty() && io_ready_.empty() && !stopping_;
  if (block_) arm_deadline(block_);
  // asyncio runs the callbacks of I/O events after those already ready, and
  // what they queue in the next iteration; libuv runs them inside the poll,
  // so this iteration's batch is counted before it.
  std::size_t batch = ready_.size();
  if (block_ || must_poll()) {
    uv_run(&uv_, block_ ? UV_RUN_ONCE : UV_RUN_NOWAIT);
    sleeping_.store(false, std::memory_order_relaxed);
    last_poll_ms_ = uv_now(&uv_);  // updated by libuv's poll: no clock read of our own
  }
  block_ = false;
  resume();
  // A signal hook may have aborted the run while libuv was dispatching.
  if (aborting_) return;
  const bool io_queued = ready_.size() != batch;
  // Writers raise the flag after each push. Work whose flag is not up yet
  // keeps on_prepare from blocking (it looks at the queue itself), so it
  // is drained on the next iteration; an empty moodycamel drain costs
  // ~40 instructions an iteration.
  if (inbox_->pending()) drain_inbox();
  if (feeder_.drain) {
    feeder_.drain(feeder_.ctx);
    if (aborting_) return;
  }
  // Only what was ready before the poll belongs to this iteration (then the
  // timers due by now, as asyncio appends them); callbacks scheduled since
  // wait for the next one. Work from other threads joins the batch unless
  // it would overtake what I/O callbacks queued. An iteration with nothing
  // else to run runs what they queued now, as the next iteration with a
  // poll that found nothing: a wake-up costs one poll, not two.
  const double now = timers_.empty() ? 0.0 : clock_now();
  const std::uint64_t timer_limit = timers_.next_seq();
  // Readiness callbacks (call_io) run after the batch, before the timers,
  // as asyncio appends select()'s handles to its ready queue: what they
  // schedule waits for the next iteration, after the next poll.
  // Streams' read/write handlers are readiness callbacks too (Stream::on_poll).
  const std::size_t io = io_ready_.size();
  const bool run_queued_now =
      (io_queued || io != 0) && batch == 0 && !stopping_ && (timers_.empty() || timers_.top_when() > now);
  if (!io_queued) batch = ready_.size();
  if (run_queued_now) {
    // This iteration is two: the one whose poll found the I/O (its
    // readiness callbacks run here), then the one after an empty poll,
    // which runs what the I/O callbacks queued, unless one of them stopped
    // the loop (that ends the first).
    if (io != 0 && !run_io(io)) return;
    if (stopping_) return;
    batch = ready_.size();
  }
  for (std::size_t n = batch; n > 0 && !ready_.empty(); --n) {
    ready_.pop_front().run();
    if (aborting_) return;
  }
  if (io != 0 && !run_queued_now && !run_io(io)) return;
  run_due_timers(now, timer_limit);
}

// Returns false when a callback aborted the run.
bool Loop::run_io(std::size_t n) {
  for (; n > 0 && !io_ready_.empty(); --n) {
    io_ready_.pop_front().run();
    if (aborting_) return false;
  }
  return true;
}

// Due timers run straight from the heap instead of through the ready queue:
// the same order, but each timer is touched once, not once when queued and
// again, long after and out of cache, when run. Timers scheduled during
// this batch (sequence >= limit) are not part of it: any of them that are
// already due are set aside and put back.
void Loop::run_due_timers(double now, std::uint64_t limit) {
  while (!timers_.empty() && timers_.top_when() <= now) {
    if (timers_.top_seq() >= limit) {
      TimerNode* node = timers_.pop();
      node->heap_slot = TimerNode::kSetAside;
      set_aside_.push_back(node);
      continue;
    }
    timers_.pop()->work.run();
    if (aborting_ || is_closed()) break;
  }
  // A callback may have closed the loop: discard_pending() took them then.
  for (TimerNode* node : set_aside_) timers_.restore(node);
  set_aside_.clear();
}

// A non-blocking poll is a syscall (about 1 us here, as much as a whole
// task step); it is skipped when nothing but the loop's own handles could
// report anything. Inbox work needs no poll (run_once drains it directly)
// and a signal interrupts the callbacks' Python code by itself. Handles
// opened straight on uv() count as I/O when they are referenced; for any
// that are not, a poll still happens at least once a millisecond.
bool Loop::must_poll() noexcept {
  unsigned own = 1;  // async_
  if (uv_is_active(reinterpret_cast<const uv_handle_t*>(&deadline_))) ++own;
  if (uv_is_active(reinterpret_cast<const uv_handle_t*>(&idle_))) ++own;
  if (uv_.active_handles > own || uv_.active_reqs.count != 0 || uv_.closing_handles != nullptr) return true;
  if (ring_ && ring_->busy()) return true;
  // libuv's millisecond clock, the one last_poll_ms_ was taken from.
  uv_update_time(&uv_);
  return uv_now(&uv_) != last_poll_ms_;
}

void Loop::drain_inbox() {
  inbox_->drain([this](const Work& work) { ready_.push_back(work); });
}

void Loop::on_prepare(uv_prepare_t* handle) noexcept {
  auto* self = static_cast<Loop*>(handle->data);
  // The iteration's one io_uring_enter: what callbacks prepared goes to the
  // kernel, and what it completed meanwhile is dispatched. Those callbacks
  // may have queued work or operations: then the poll must not block.
  if (self->ring_ && self->ring_->flush() && self->block_) {
    self->block_ = false;
    uv_idle_start(&self->idle_, [](uv_idle_t*) {});
  }
  // libuv ran its due timers and pending callbacks since run_once decided
  // to block; if they queued work, an active idle handle makes the poll
  // return at once (libuv computes the poll timeout after this callback).
  if (self->block_ && (!self->ready_.empty() || !self->io_ready_.empty() || self->stopping_)) {
    self->block_ = false;
    uv_idle_start(&self->idle_, [](uv_idle_t*) {});
  }
  // libuv's clock is coarse (ms, and it may tick between arm_deadline()
  // and uv_run's own update): the deadline timer can have fired already,
  // before this poll, which would then wait with no timeout at all.
  if (self->block_ && !self->timers_.empty() && !uv_is_active(reinterpret_cast<uv_handle_t*>(&self->deadline_))) {
    self->arm_deadline(self->block_);
    if (!self->block_) uv_idle_start(&self->idle_, [](uv_idle_t*) {});
  }
  // Idle polling: the wait (and the GIL's release) begins here, but the
  // feeder may first watch for work a while with nothing published asleep,
  // so a sender that comes soon needs no wake-up. Never with the GIL held.
  if (self->block_ && self->feeder_.idle) {
    if (!self->waiting_) {
      self->waiting_ = true;
      self->call_hook(self->hooks_.before_wait);
    }
    const double until = self->timers_.empty() ? HUGE_VAL : self->timers_.top_when();
    if (self->feeder_.idle(self->feeder_.ctx, until)) {
      self->block_ = false;
      uv_idle_start(&self->idle_, [](uv_idle_t*) {});
    }
  }
  // Last: a sender that queued before the flag went up is seen here, one
  // that queues after it wakes the poll.
  if (self->block_ && self->feeder_.sleep && self->feeder_.sleep(self->feeder_.ctx)) {
    self->block_ = false;
    uv_idle_start(&self->idle_, [](uv_idle_t*) {});
  }
  if (self->block_) {
    self->sleeping_.store(true, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // The flag, not the queue: a push that found the flag up skipped its
    // own look at `sleeping_`, and relies on the flag staying up until a
    // drain; the push that raised it paired its fence with this one.
    if (self->inbox_->pending()) {
      self->sleeping_.store(false, std::memory_order_relaxed);
      self->block_ = false;
      uv_idle_start(&self->idle_, [](uv_idle_t*) {});
    }
  }
  if (self->block_ && !self->waiting_) {
    self->waiting_ = true;
    self->call_hook(self->hooks_.before_wait);
  }
}

void Loop::set_hooks(const Hooks& hooks) noexcept {
  hooks_ = hooks;
  if (is_closed()) return;
  // Only an embedder's after_wait needs the wait ended right after the
  // poll; without one the check handle would only cost every iteration.
  if (hooks_.after_wait)
    uv_check_start(&check_, &Loop::on_check);
  else
    uv_check_stop(&check_);
}

void Loop::on_check(uv_check_t* handle) noexcept { static_cast<Loop*>(handle->data)->resume(); }

void Loop::on_async(uv_async_t* handle) noexcept {
  auto* self = static_cast<Loop*>(handle->data);
  // The ready queue is the embedder's to guard too (the GIL): take it back
  // before touching the queue, as every other callback does.
  self->resume();
  try {
    self->drain_inbox();
  } catch (...) {
    // Growing the ready queue failed (see Inbox::drain). Nothing may
    // unwind into libuv.
    self->report_error(std::current_exception());
  }
}

void Loop::on_signal_readable(uv_poll_t* handle, int, int) noexcept {
  auto* self = static_cast<Loop*>(handle->data);
  self->resume();
  char buf[256];
  ssize_t n;
  while ((n = ::read(self->signal_fds_[0], buf, sizeof buf)) > 0) {
    for (ssize_t i = 0; i < n && self->signals_read_count_ < kMaxSignalsRead; ++i) {
      self->signals_read_[self->signals_read_count_++] = static_cast<unsigned char>(buf[i]);
    }
    // Best effort, as CPython's own handler writes the wakeup fd: the
    // displaced fd is non-blocking (set_wakeup_fd demands it), and a full
    // buffer already tells its owner that signals arrived.
    if (self->signal_forward_fd_ >= 0 && ::write(self->signal_forward_fd_, buf, static_cast<std::size_t>(n)) < 0) {
    }
  }
  self->call_hook(self->hooks_.on_signal);
}

std::string Loop::take_signals() {
  std::string taken(reinterpret_cast<const char*>(signals_read_), signals_read_count_);
  signals_read_count_ = 0;
  return taken;
}

int Loop::signal_wakeup_fd() {
  if (signal_fds_[1] >= 0) return signal_fds_[1];
  if (is_closed()) throw std::logic_error("Event loop is closed");
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
    throw std::runtime_error("socketpair failed");
  signal_fds_[0] = fds[0];
  signal_fds_[1] = fds[1];
  check_uv(uv_poll_init(&uv_, &signal_poll_, fds[0]), "uv_poll_init");
  uv_poll_start(&signal_poll_, UV_READABLE, &Loop::on_signal_readable);
  // Watching for signals must not keep the loop alive on its own.
  uv_unref(reinterpret_cast<uv_handle_t*>(&signal_poll_));
  return fds[1];
}

void Loop::after_fork() {
  if (is_closed()) return;
  if (signal_fds_[0] >= 0) {
    // A fresh socketpair under the same fd numbers: Python's wakeup fd and
    // the poll handle keep their numbers, and the parent keeps the old pair.
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
      throw std::runtime_error("socketpair failed");
    ::dup3(fds[0], signal_fds_[0], O_CLOEXEC);
    ::dup3(fds[1], signal_fds_[1], O_CLOEXEC);
    ::close(fds[0]);
    ::close(fds[1]);
  }
  // Closes (never edits) the inherited epoll fd and eventfd, makes new
  // ones, and re-registers every watcher on the next poll.
  check_uv(uv_loop_fork(&uv_), "uv_loop_fork");
  // The ring's memory is shared with the parent: never touched again here
  // (its streams' operations go nowhere), its eventfd unwatched (now only
  // in this process's new epoll set) so the parent's wake-ups stay its
  // own. Streams opened from now on are on epoll.
  if (ring_) {
    ring_->orphan();
    orphaned_ring_ = std::move(ring_);
    want_ring_ = false;
  }
}

void Loop::adopt(OwnedHandle* handle) noexcept {
  handle->next_ = owned_;
  if (owned_) owned_->prev_ = handle;
  owned_ = handle;
  handle->attached_ = true;
}

void Loop::disown(OwnedHandle* handle) noexcept {
  if (handle->prev_) handle->prev_->next_ = handle->next_;
  if (handle->next_) handle->next_->prev_ = handle->prev_;
  if (owned_ == handle) owned_ = handle->next_;
  handle->prev_ = handle->next_ = nullptr;
  handle->attached_ = false;
}

void Loop::discard_pending() noexcept {
  while (!ready_.empty()) ready_.pop_front().discard();
  while (!io_ready_.empty()) io_ready_.pop_front().discard();
  while (TimerNode* node = timers_.pop()) node->work.discard();
  for (TimerNode* node : set_aside_) {
    node->heap_slot = TimerNode::kNotScheduled;
    node->work.discard();
  }
  set_aside_.clear();
  inbox_->drain([](const Work& work) { work.discard(); });
}

void Loop::close() {
  if (is_closed()) return;
  if (running_) throw std::logic_error("Cannot close a running event loop");
  closed_.store(true, std::memory_order_seq_cst);
  inbox_->close();
  // Only the ring's own thread may submit to it or wait on it, and Python
  // may close a loop from another thread than the one that ran it: there
  // the ring is torn down before any stream closes (see Ring::abandon).
  if (ring_ && ring_thread_ != std::this_thread::get_id()) ring_->abandon();
  // Discarded work may try to schedule more; the loop is marked closed
  // first, so that is refused instead of queued behind the drain.
  discard_pending();
  // Engine handles close through their own close() (which frees them);
  // whatever else is still open was opened on uv() directly.
  while (owned_ != nullptr) owned_->close();
  // Closed streams' cancellations complete before the ring goes.
  if (ring_) ring_->drain();
  uv_walk(
      &uv_,
      [](uv_handle_t* handle, void*) {
        if (!uv_is_closing(handle)) uv_close(handle, nullptr);
      },
      nullptr);
  uv_run(&uv_, UV_RUN_DEFAULT);
  if (signal_fds_[0] >= 0) {
    ::close(signal_fds_[0]);
    ::close(signal_fds_[1]);
    signal_fds_[0] = signal_fds_[1] = -1;
  }
  int rc = uv_loop_close(&uv_);
  ring_.reset();
  orphaned_ring_.reset();
  if (rc != 0) throw std::runtime_error(std::string("uv_loop_close: ") + uv_strerror(rc));
}

}  // namespace shardloop
