#include "shardloop/runtime.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>

#include "inbox.hpp"
#include "shardloop/clock.hpp"
#include "shardloop/spsc_queue.hpp"

namespace shardloop {

namespace {

thread_local Runtime* tls_runtime = nullptr;
thread_local int tls_shard = -1;

enum State : int { kRunning = 0, kDraining = 1, kClosed = 2 };

// Work a thread that is not a shard may queue per drain before the shard
// looks at its other queues again.
constexpr std::size_t kForeignBatch = 1024;

// How long an idle-polling shard watches its queues before it hands back to
// its loop for one non-blocking poll (I/O, signals, libuv's own timers): the
// epoll_wait and the loop iteration cost about 0.6 us of CPU here (2-core
// KVM guest), a tenth of the watching, and I/O waits about 5 us at most.
constexpr double kIdleSlice = 5e-6;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

struct Runtime::Shard {
  // Written by the shard before it blocks, read by every sender: its own
  // cache line, apart from what senders write.
  alignas(64) std::atomic<bool> sleeping{false};
  alignas(64) std::atomic<int> state{kRunning};
  std::atomic<Loop*> loop{nullptr};
  unsigned id = 0;
  int cpu = -1;
  bool restore_affinity = false;
  cpu_set_t saved_affinity;
  std::vector<std::function<void()>> at_exit;
  // incoming[p]: from shard p, allocated by shard p on its first message
  // (nullptr until then); only shard p pushes, only this shard pops.
  std::unique_ptr<std::atomic<SpscQueue<Work>*>[]> incoming;
  // From threads that are not shards; closed when the shard stops taking
  // work (detach, abandon), as `state` leaves kRunning.
  Inbox foreign;
  std::atomic<std::uint64_t> wakeups{0};
  Runtime* rt = nullptr;
  // Shard thread only: when the current idle-polling window began (< 0:
  // none open).
  double idle_since = -1;
};

std::vector<int> Runtime::usable_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) {
    unsigned n = std::thread::hardware_concurrency();
    for (unsigned c = 0; c < (n ? n : 1); ++c) cpus.push_back(static_cast<int>(c));
  }
  return cpus;
}

Runtime::Runtime(Options options) : cpus_(usable_cpus()) {
  count_ = options.shards ? options.shards : static_cast<unsigned>(cpus_.size());
  if (count_ > kMaxShards) {
    if (options.shards == 0) {
      count_ = kMaxShards;  // one per CPU, on a machine with more CPUs than that
    } else {
      throw std::invalid_argument("at most " + std::to_string(kMaxShards) + " shards, got " +
                                  std::to_string(count_));
    }
  }
  ring_capacity_ = options.ring_capacity;
  pin_ = options.pin && count_ <= cpus_.size();
  io_uring_ = options.io_uring;
  // A shard spinning on a CPU another shard needs delays that shard.
  if (count_ <= cpus_.size()) idle_poll_s_ = options.idle_poll_us * 1e-6;
  shards_.reset(new Shard[count_]);
  for (unsigned s = 0; s < count_; ++s) {
    Shard& sh = shards_[s];
    sh.id = s;
    sh.rt = this;
    sh.cpu = pin_ ? cpus_[s] : -1;
    sh.incoming.reset(new std::atomic<SpscQueue<Work>*>[count_]);
    for (unsigned p = 0; p < count_; ++p) sh.incoming[p].store(nullptr, std::memory_order_relaxed);
  }
}

Runtime::~Runtime() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (attached_ != detaching_) {
      std::fprintf(stderr, "shardloop: Runtime destroyed while shards are attached\n");
      std::abort();
    }
  }
  // Shards that never attached may hold work: it is discarded here, after
  // every shard refuses more (a discarded request's reply is refused too).
  for (unsigned s = 0; s < count_; ++s) shards_[s].state.store(kClosed, std::memory_order_seq_cst);
  for (unsigned s = 0; s < count_; ++s) {
    shards_[s].foreign.close();
    discard_all(shards_[s]);
  }
  for (unsigned s = 0; s < count_; ++s)
    for (unsigned p = 0; p < count_; ++p) delete shards_[s].incoming[p].load(std::memory_order_acquire);
}

Runtime::Shard& Runtime::shard(unsigned s) const {
  if (s >= count_) throw std::out_of_range("no shard " + std::to_string(s) + " (shards: " + std::to_string(count_) + ")");
  return shards_[s];
}

Runtime* Runtime::current() noexcept { return tls_runtime; }
int Runtime::this_shard() noexcept { return tls_shard; }
bool Runtime::on_shard(unsigned s) const noexcept { return tls_runtime == this && tls_shard == static_cast<int>(s); }
Runtime::Shard* Runtime::my_shard() const noexcept {
  return tls_runtime == this && tls_shard >= 0 ? &shards_[tls_shard] : nullptr;
}

Loop* Runtime::loop_of(unsigned s) const noexcept {
  return s < count_ ? shards_[s].loop.load(std::memory_order_acquire) : nullptr;
}

bool Runtime::stopping() const noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

Runtime::Stats Runtime::stats() const noexcept {
  Stats st;
  for (unsigned s = 0; s < count_; ++s) st.wakeups += shards_[s].wakeups.load(std::memory_order_relaxed);
  // Producer-side counters: exact once the shards are quiet.
  for (unsigned s = 0; s < count_; ++s) {
    for (unsigned p = 0; p < count_; ++p) {
      if (const SpscQueue<Work>* q = shards_[s].incoming[p].load(std::memory_order_acquire)) {
        st.overflows += q->overflows();
        ++st.rings;
      }
    }
  }
  return st;
}

// --- sending ---------------------------------------------------------------

void Runtime::wake(Shard& to) noexcept {
  // Dekker with sleep(): our push, a full fence, then its flag; it sets the
  // flag, a full fence, then looks at the queues. One of us sees the other.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (to.sleeping.load(std::memory_order_relaxed) && to.sleeping.exchange(false, std::memory_order_acq_rel)) {
    to.wakeups.fetch_add(1, std::memory_order_relaxed);
    to.loop.load(std::memory_order_acquire)->wake();
  }
}

bool Runtime::post_from_shard(Shard& from, Shard& to, Work work) {
  if (to.state.load(std::memory_order_acquire) == kClosed) return false;
  // Only this thread stores this slot: a relaxed load sees its own store.
  std::atomic<SpscQueue<Work>*>& slot = to.incoming[from.id];
  SpscQueue<Work>* ring = slot.load(std::memory_order_relaxed);
  if (ring == nullptr) {
    ring = new SpscQueue<Work>(ring_capacity_);  // bad_alloc: nothing was queued
    // Release: the receiver that sees the pointer sees a built ring.
    slot.store(ring, std::memory_order_release);
  }
  ring->push(work);
  wake(to);
  return true;
}

bool Runtime::post_foreign(Shard& to, Work work) {
  // Refused once the shard started settling its queues (detach) or left
  // (abandon); throws std::bad_alloc rather than lose the work.
  return to.foreign.push(work, [&] { wake(to); });
}

bool Runtime::post(unsigned target, Work work) {
  Shard& to = shard(target);
  if (Shard* me = my_shard()) return post_from_shard(*me, to, work);
  return post_foreign(to, work);
}

bool Runtime::post(unsigned target, std::function<void()> fn) {
  shard(target);  // range check before anything is allocated
  Work work = make_work(std::move(fn));
  if (post(target, work)) return true;
  work.discard();
  return false;
}

// --- receiving -------------------------------------------------------------

std::size_t Runtime::drain(Shard& sh, bool run) noexcept {
  std::size_t n = 0;
  for (unsigned p = 0; p < count_; ++p) {
    SpscQueue<Work>* q = sh.incoming[p].load(std::memory_order_acquire);
    if (q == nullptr) continue;
    if (run)
      n += q->drain([](const Work& w) { w.run(); });
    else
      n += q->drain([](const Work& w) { w.discard(); });
  }
  // At most a batch: a flood from outside must not starve the shard's own
  // work; the flag stays up for the rest (and the shard does not block).
  if (sh.foreign.pending()) {
    if (run)
      n += sh.foreign.drain([](const Work& w) { w.run(); }, kForeignBatch);
    else
      n += sh.foreign.drain([](const Work& w) { w.discard(); }, kForeignBatch);
  }
  return n;
}

// One drain takes at most a batch of foreign work, so a closed shard's
// queues are emptied by draining until nothing is left: each item discarded
// releases what it owns (a Python handle, a request's reply).
void Runtime::discard_all(Shard& sh) noexcept {
  while (drain(sh, false) != 0) {
  }
}

void Runtime::feed(void* ctx) noexcept {
  auto* sh = static_cast<Shard*>(ctx);
  if (sh->sleeping.load(std::memory_order_relaxed)) sh->sleeping.store(false, std::memory_order_relaxed);
  if (sh->rt->drain(*sh, true) != 0) sh->idle_since = -1;
}

bool Runtime::has_work(const Shard& sh) noexcept {
  if (sh.foreign.pending()) return true;
  const unsigned count = sh.rt->count_;
  for (unsigned p = 0; p < count; ++p) {
    const SpscQueue<Work>* q = sh.incoming[p].load(std::memory_order_acquire);
    if (q != nullptr && !q->empty()) return true;
  }
  return false;
}

bool Runtime::sleep(void* ctx) noexcept {
  auto* sh = static_cast<Shard*>(ctx);
  sh->sleeping.exchange(true, std::memory_order_seq_cst);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool work = has_work(*sh);
  if (work) sh->sleeping.store(false, std::memory_order_relaxed);
  return work;
}

// Nothing is published here: senders see the shard awake and only push, so
// this watches everything they push to (the rings, the foreign queue, the
// loop's inbox, where stop() goes too). The loop's own sources are polled
// between slices. Once the window has passed, sleep() takes over with its
// usual handshake, so a sender racing with the end of the window is seen
// there or wakes the poll.
bool Runtime::idle(void* ctx, double until) noexcept {
  auto* sh = static_cast<Shard*>(ctx);
  const Loop* loop = sh->loop.load(std::memory_order_relaxed);
  double now = monotonic_now();
  if (sh->idle_since < 0) sh->idle_since = now;
  const double window_end = sh->idle_since + sh->rt->idle_poll_s_;
  if (now >= window_end) {
    sh->idle_since = -1;
    return false;
  }
  const double slice_end = std::min({window_end, until, now + kIdleSlice});
  for (;;) {
    if (has_work(*sh) || loop->inbox_pending()) {
      sh->idle_since = -1;
      return true;
    }
    // The end of a slice (or a due timer): poll the loop, then come back.
    if (monotonic_now() >= slice_end) return true;
    cpu_relax();
  }
}

// --- lifecycle -------------------------------------------------------------

void Runtime::attach(unsigned s, Loop& loop) {
  Shard& sh = shard(s);
  if (tls_runtime != nullptr) throw std::logic_error("this thread is already a shard");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (detaching_ != 0) throw std::logic_error("the runtime is shutting down");
    if (sh.loop.load(std::memory_order_relaxed) != nullptr) throw std::logic_error("shard " + std::to_string(s) + " is already attached");
    sh.loop.store(&loop, std::memory_order_release);
    ++attached_;
    if (stopping_) loop.call_soon_threadsafe(Work{[](void* l, bool run) noexcept { if (run) static_cast<Loop*>(l)->stop(); }, &loop});
  }
  if (sh.cpu >= 0) {
    sh.restore_affinity = pthread_getaffinity_np(pthread_self(), sizeof sh.saved_affinity, &sh.saved_affinity) == 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(sh.cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // best effort
  }
  tls_runtime = this;
  tls_shard = static_cast<int>(s);
  sh.idle_since = -1;
  loop.set_feeder(Loop::Feeder{&sh, &Runtime::feed, &Runtime::sleep, idle_poll_s_ > 0 ? &Runtime::idle : nullptr});
}

void Runtime::stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopping_ = true;
  for (unsigned s = 0; s < count_; ++s) {
    Loop* loop = shards_[s].loop.load(std::memory_order_relaxed);
    if (loop) loop->call_soon_threadsafe(Work{[](void* l, bool run) noexcept { if (run) static_cast<Loop*>(l)->stop(); }, loop});
  }
}

void Runtime::at_exit(std::function<void()> fn) {
  Shard* sh = my_shard();
  if (!sh) throw std::logic_error("at_exit() needs a shard thread");
  sh->at_exit.push_back(std::move(fn));
}

// One shutdown round: true when any shard did something during it (so
// another round is needed). A round where no shard found or sent anything
// proves every queue empty: all that was sent in earlier rounds was visible
// to this round's drains.
bool Runtime::round(bool active) {
  std::unique_lock<std::mutex> lock(mu_);
  round_activity_ = round_activity_ || active;
  if (++round_waiting_ == attached_) {
    round_result_ = round_activity_;
    round_activity_ = false;
    round_waiting_ = 0;
    ++round_gen_;
    cv_.notify_all();
    return round_result_;
  }
  std::uint64_t gen = round_gen_;
  cv_.wait(lock, [&] { return round_gen_ != gen; });
  return round_result_;
}

void Runtime::detach() {
  Shard* shp = my_shard();
  if (!shp) throw std::logic_error("detach() needs a shard thread");
  Shard& sh = *shp;
  Loop* loop = sh.loop.load(std::memory_order_relaxed);
  if (loop->is_running()) throw std::logic_error("detach() while the shard's loop runs");
  stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++detaching_;
  }
  // The loop has returned: it is not asleep, whatever an abort left behind.
  sh.sleeping.store(false, std::memory_order_seq_cst);
  sh.state.store(kDraining, std::memory_order_seq_cst);
  sh.foreign.close();
  while (round(drain(sh, false) != 0)) {
  }
  sh.state.store(kClosed, std::memory_order_seq_cst);
  leave(sh, loop);
  // After the last round nobody sends here, so nobody reads the pointer to
  // wake the loop; stop() reads it under the lock.
  std::lock_guard<std::mutex> lock(mu_);
  sh.loop.store(nullptr, std::memory_order_release);
}

// What detach() and abandon() both do once the shard takes no more work:
// its exit hooks, then the loop and the thread are unbound.
void Runtime::leave(Shard& sh, Loop* loop) noexcept {
  for (auto& fn : sh.at_exit) {
    try {
      fn();
    } catch (...) {
      loop->report_error(std::current_exception());
    }
  }
  sh.at_exit.clear();
  loop->set_feeder(Loop::Feeder{});
  if (sh.restore_affinity) pthread_setaffinity_np(pthread_self(), sizeof sh.saved_affinity, &sh.saved_affinity);
  tls_runtime = nullptr;
  tls_shard = -1;
}

void Runtime::abandon() {
  Shard* shp = my_shard();
  if (!shp) throw std::logic_error("abandon() needs a shard thread");
  Shard& sh = *shp;
  Loop* loop = sh.loop.load(std::memory_order_relaxed);
  if (loop->is_running()) throw std::logic_error("abandon() while the shard's loop runs");
  stop();
  sh.sleeping.store(false, std::memory_order_seq_cst);
  // Refused from here on, as after detach(); announced foreign writers
  // finish first, so nothing lands behind the drain below.
  sh.state.store(kClosed, std::memory_order_seq_cst);
  sh.foreign.close();
  discard_all(sh);
  leave(sh, loop);
  // The shutdown rounds count the shards still attached: without this one,
  // the others settle among themselves. `loop` stays set (not nullptr) for
  // senders that looked at the state before it changed: Loop::wake() is
  // harmless on a closed loop.
  std::lock_guard<std::mutex> lock(mu_);
  --attached_;
  if (round_waiting_ != 0 && round_waiting_ >= attached_) {
    // The others were all waiting for this shard: end their round, and ask
    // for one more since what was discarded here may have sent replies.
    round_result_ = true;
    round_activity_ = false;
    round_waiting_ = 0;
    ++round_gen_;
    cv_.notify_all();
  }
}

void Runtime::forget_thread_after_fork() noexcept {
  tls_runtime = nullptr;
  tls_shard = -1;
}

void Runtime::run(std::function<void(unsigned)> init) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ran_ || attached_ != 0) throw std::logic_error("Runtime::run() may be called once, on an unused runtime");
    ran_ = true;
  }
  std::exception_ptr error;
  // Every shard attaches before any may start shutting down, or an early
  // stop would settle the queues without the shards that come late.
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  unsigned attached = 0;
  auto body = [&](unsigned s) {
    Loop loop;
    if (io_uring_) loop.set_io_backend(IoBackend::kIoUring);
    attach(s, loop);
    {
      std::unique_lock<std::mutex> lock(gate_mu);
      ++attached;
      gate_cv.notify_all();
      gate_cv.wait(lock, [&] { return attached == count_; });
    }
    try {
      if (init) init(s);
      if (!stopping()) loop.run();
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error) error = std::current_exception();
      }
      stop();
    }
    detach();
    loop.close();
  };
  std::vector<std::thread> threads;
  threads.reserve(count_ > 0 ? count_ - 1 : 0);
  try {
    for (unsigned s = 1; s < count_; ++s) threads.emplace_back(body, s);
  } catch (...) {
    // The threads already started wait at the gate for a shard that will
    // never come; there is no clean way back from here.
    std::fprintf(stderr, "shardloop: could not start the shard threads\n");
    std::abort();
  }
  body(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace shardloop
