// Thread-per-core runtime: N shards, each one engine Loop on its own thread
// (optionally pinned to one CPU), talking through lock-free queues: one
// single-producer ring per ordered pair of shards, one multi-producer queue
// per shard for threads that are not shards. A sender wakes the target
// (uv_async_send) only when the target has announced it is about to block,
// so a busy shard receives without a syscall per message.
//
// Shutdown is collective: once any shard detaches (or stop() ends run()),
// every shard stops its loop, and the shards then answer what is still
// queued until nothing is left anywhere: a submit_to() request is answered
// with ShardStopped, a posted Work is discarded (its fn gets run=false), a
// reply still reaches its caller's callback. Nothing is dropped silently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

#include "shardloop/loop.hpp"
#include "shardloop/work.hpp"

namespace shardloop {

// What a cross-shard call gets when its target shard has stopped.
class ShardStopped : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A value or the exception that replaced it.
template <typename T>
class Result {
 public:
  Result() = default;
  static Result failure(std::exception_ptr e) {
    Result r;
    r.error_ = std::move(e);
    return r;
  }
  template <typename F>
  static Result of(F& fn) {
    try {
      Result r;
      r.value_.emplace(fn());
      return r;
    } catch (...) {
      return failure(std::current_exception());
    }
  }
  bool ok() const noexcept { return !error_; }
  std::exception_ptr error() const noexcept { return error_; }
  // The value, or rethrows the exception.
  T& get() {
    if (error_) std::rethrow_exception(error_);
    return *value_;
  }

 private:
  std::optional<T> value_;
  std::exception_ptr error_;
};

template <>
class Result<void> {
 public:
  static Result failure(std::exception_ptr e) {
    Result r;
    r.error_ = std::move(e);
    return r;
  }
  template <typename F>
  static Result of(F& fn) {
    try {
      fn();
      return Result{};
    } catch (...) {
      return failure(std::current_exception());
    }
  }
  bool ok() const noexcept { return !error_; }
  std::exception_ptr error() const noexcept { return error_; }
  void get() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
};

namespace detail {

// Lives on the shard that made the future: only that thread touches it.
template <typename T>
struct FutureState {
  std::optional<Result<T>> result;
  std::function<void(Result<T>&)> callback;

  void complete(Result<T>&& r) noexcept {
    if (!callback) {
      result.emplace(std::move(r));
      return;
    }
    auto cb = std::move(callback);
    callback = nullptr;
    try {
      cb(r);
    } catch (...) {
      Loop::report_on_current(std::current_exception());
    }
  }
};

}  // namespace detail

// The result of submit_to(): completed on the shard that called it, by a
// reply that travels back through that shard's queues.
template <typename T>
class Future {
 public:
  // `callback(Result<T>&)` runs once, on this shard: at once if the result is
  // already there, else when it arrives.
  void then(std::function<void(Result<T>&)> callback) {
    auto& s = *state_;
    if (s.result) {
      Result<T> r = std::move(*s.result);
      s.result.reset();
      s.callback = std::move(callback);
      s.complete(std::move(r));
    } else {
      s.callback = std::move(callback);
    }
  }
  bool ready() const noexcept { return state_->result.has_value(); }

 private:
  friend class Runtime;
  explicit Future(std::shared_ptr<detail::FutureState<T>> s) : state_(std::move(s)) {}
  std::shared_ptr<detail::FutureState<T>> state_;
};

class Runtime {
 public:
  // The most shards a runtime takes. A ring per ordered pair of shards is
  // allocated on the pair's first message (16 KiB at the default capacity),
  // but the table of ring pointers is N x N (8 MiB at 1024) and every shard
  // looks at its N incoming slots on each iteration; 1024 is twice the
  // hardware threads of the largest common two-socket servers (512).
  static constexpr unsigned kMaxShards = 1024;

  struct Options {
    // 0: one per CPU in the process's affinity mask.
    unsigned shards = 0;
    // Pin shard i to the i-th CPU of the mask (only when shards <= CPUs).
    bool pin = true;
    // Slots per ring (per ordered pair of shards that has sent anything).
    // A full ring never blocks its sender and never drops: the sender links
    // a further ring of the same size behind it (order is kept), which the
    // receiver frees once it has emptied it. Blocking could deadlock two
    // shards sending to each other (or a shard sending to itself), dropping
    // would lose work; so what a lagging receiver holds is bounded by what
    // was sent to it, as with asyncio's call_soon_threadsafe.
    std::size_t ring_capacity = 1024;
    // Idle polling (Seastar's idle-poll-time): a shard that runs out of work
    // keeps watching its queues for up to this long before it blocks in the
    // kernel, so work that comes meanwhile costs its sender no syscall and
    // its receiver no wake-up (on this 2-core KVM guest a wake-up is 30-40 us
    // p50, a watched ring well under 1 us). Meanwhile its loop polls without
    // blocking every few microseconds (I/O, signals, timers stay on time),
    // and work from other shards or threads restarts the window.
    // Default 0 (off): the shard burns its CPU for that long after every
    // burst of work. Shards default to one per CPU, and the Python binding
    // (shardloop.run(shards=N)) uses these defaults on machines it shares
    // with load generators, other processes and its own threads; there a
    // spinning shard takes the CPU that the work it waits for needs. Turn
    // it on for native services that own their cores. Ignored when there
    // are more shards than CPUs. The spin never holds the GIL: it runs
    // after the loop's before_wait hook.
    unsigned idle_poll_us = 0;
    // run(): each shard's loop on the io_uring backend (stream.hpp), where
    // this process can have a ring; otherwise epoll (Loop::io_backend()
    // says which, Loop::io_fallback_reason() why).
    bool io_uring = false;
  };

  // Throws std::invalid_argument for more than kMaxShards shards.
  explicit Runtime(Options options);
  Runtime() : Runtime(Options{}) {}
  // Every attached shard must have detached (run() does that).
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  unsigned shard_count() const noexcept { return count_; }
  // Whether attach() pins threads (pin requested and enough CPUs).
  bool pinned() const noexcept { return pin_; }
  // The CPUs of the calling thread's affinity mask.
  static std::vector<int> usable_cpus();

  // --- native services: the runtime owns the threads and loops ---------
  // Shards 1..N-1 on new threads, shard 0 on the calling thread. `init(s)`
  // runs on each shard's thread, attached, before its loop runs (open
  // servers, timers). Returns once stop() was called and every shard has
  // shut down (queues answered, threads joined, handles closed); rethrows
  // the first exception an `init` threw (which also stops the runtime).
  void run(std::function<void(unsigned shard)> init = {});

  // Any thread: every shard's loop stops after its current iteration.
  void stop();
  bool stopping() const noexcept;

  // --- embedders (the Python binding): their threads, their loops -----
  // On the thread that will run `loop` as shard `shard`: binds them (pins
  // the thread if pinned()). Every shard attaches before any detaches.
  void attach(unsigned shard, Loop& loop);
  // On a shard's thread once its loop has returned: stops every shard and
  // takes part in the collective shutdown described above; returns when no
  // cross-shard work is left anywhere. Runs the at_exit callbacks of this
  // shard, then unbinds the loop (which stays open) and restores the
  // thread's affinity.
  void detach();
  // On a shard's thread once its loop has returned, instead of detach()
  // when another shard does not come to detach() in time (stuck in a
  // blocking callback): this shard leaves at once. It refuses further
  // work, discards what is queued to it, runs its at_exit callbacks and
  // unbinds its loop; the other shards stop and settle their queues among
  // themselves whenever they detach. The loop must stay allocated (closed
  // is fine) until the runtime is destroyed: late senders may still wake it.
  void abandon();
  // In a fork child: the forking thread is no shard of any runtime there
  // (the runtime's other threads are gone), so it may attach to a new one.
  static void forget_thread_after_fork() noexcept;
  // Current shard: `fn` runs on this thread during detach(), after the
  // queues are settled and before the loop is unbound (it may close handles).
  void at_exit(std::function<void()> fn);

  // The loop of an attached shard (any thread; nullptr when not attached
  // or once detached).
  Loop* loop_of(unsigned shard) const noexcept;
  // The runtime and shard of the calling thread (nullptr / -1 outside).
  static Runtime* current() noexcept;
  static int this_shard() noexcept;
  bool on_shard(unsigned shard) const noexcept;

  // --- cross-shard work ------------------------------------------------
  // Any thread: queues `work` to run on `shard`'s thread, in order with
  // other work this thread sent there. Returns false, leaving `work` with
  // the caller, when the shard no longer takes work (it has stopped; from a
  // thread that is not a shard: once shutdown has begun). Throws
  // std::out_of_range for a missing shard.
  bool post(unsigned shard, Work work);
  bool post(unsigned shard, std::function<void()> fn);

  // From a shard thread: runs `fn()` on `shard`; the result (or the
  // exception fn threw, or ShardStopped) comes back to this shard.
  template <typename F>
  auto submit_to(unsigned shard, F fn) -> Future<std::invoke_result_t<F&>>;

  // From any thread: the same, with the result delivered through a
  // std::future (blocking get(); never call it for the shard you are on).
  template <typename F>
  auto invoke_on(unsigned shard, F fn) -> std::future<std::invoke_result_t<F&>>;

  struct Stats {
    std::uint64_t wakeups = 0;    // uv_async_send calls made to wake a shard
    std::uint64_t overflows = 0;  // times a ring was full and grew
    std::uint64_t rings = 0;      // pair rings allocated (pairs that have talked)
  };
  Stats stats() const noexcept;

 private:
  struct Shard;
  template <typename F, typename T>
  struct Call;
  template <typename F, typename T>
  struct ForeignCall;

  Shard& shard(unsigned s) const;
  Shard* my_shard() const noexcept;
  void leave(Shard& sh, Loop* loop) noexcept;
  static void feed(void* ctx) noexcept;
  static bool sleep(void* ctx) noexcept;
  static bool idle(void* ctx, double until) noexcept;
  static bool has_work(const Shard& sh) noexcept;
  std::size_t drain(Shard& sh, bool run) noexcept;
  void discard_all(Shard& sh) noexcept;
  bool post_from_shard(Shard& from, Shard& to, Work work);
  bool post_foreign(Shard& to, Work work);
  void wake(Shard& to) noexcept;
  bool round(bool active);

  unsigned count_;
  std::size_t ring_capacity_ = 1024;
  bool pin_;
  double idle_poll_s_ = 0;  // 0: off
  std::vector<int> cpus_;
  bool io_uring_ = false;
  std::unique_ptr<Shard[]> shards_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool ran_ = false;
  unsigned attached_ = 0;
  unsigned detaching_ = 0;
  // The shutdown rounds' barrier.
  unsigned round_waiting_ = 0;
  std::uint64_t round_gen_ = 0;
  bool round_activity_ = false;
  bool round_result_ = false;
};

inline int this_shard() noexcept { return Runtime::this_shard(); }
inline unsigned shard_count() noexcept {
  Runtime* rt = Runtime::current();
  return rt ? rt->shard_count() : 1;
}

// --- templates -------------------------------------------------------------

// One allocation carries the call there and its result back.
template <typename F, typename T>
struct Runtime::Call {
  Runtime* rt;
  unsigned caller;
  std::optional<F> fn;
  Result<T> result;
  std::shared_ptr<detail::FutureState<T>> state;

  static void request(void* ctx, bool run) noexcept {
    auto* c = static_cast<Call*>(ctx);
    c->result = run ? Result<T>::of(*c->fn)
                    : Result<T>::failure(std::make_exception_ptr(ShardStopped("target shard stopped")));
    c->fn.reset();  // its captures die on the shard that ran it
    if (!c->rt->post(c->caller, Work{&Call::reply, c})) reply(c, false);
  }
  // Discarded away from the caller's thread (the caller has stopped):
  // there is nobody left to tell.
  static void reply(void* ctx, bool) noexcept {
    auto* c = static_cast<Call*>(ctx);
    if (c->rt->on_shard(c->caller)) c->state->complete(std::move(c->result));
    delete c;
  }
};

template <typename F, typename T>
struct Runtime::ForeignCall {
  std::optional<F> fn;
  std::promise<T> promise;

  static void request(void* ctx, bool run) noexcept {
    auto* c = static_cast<ForeignCall*>(ctx);
    try {
      if (!run) throw ShardStopped("target shard stopped");
      if constexpr (std::is_void_v<T>) {
        (*c->fn)();
        c->promise.set_value();
      } else {
        c->promise.set_value((*c->fn)());
      }
    } catch (...) {
      c->promise.set_exception(std::current_exception());
    }
    delete c;
  }
};

template <typename F>
auto Runtime::submit_to(unsigned target, F fn) -> Future<std::invoke_result_t<F&>> {
  using T = std::invoke_result_t<F&>;
  shard(target);  // range check
  int me = this_shard();
  if (current() != this || me < 0) throw std::logic_error("submit_to() needs a shard thread; use invoke_on()");
  auto state = std::make_shared<detail::FutureState<T>>();
  auto* c = new Call<F, T>{this, static_cast<unsigned>(me), std::optional<F>(std::move(fn)), {}, state};
  if (!post(target, Work{&Call<F, T>::request, c})) Call<F, T>::request(c, false);
  return Future<T>(std::move(state));
}

template <typename F>
auto Runtime::invoke_on(unsigned target, F fn) -> std::future<std::invoke_result_t<F&>> {
  using T = std::invoke_result_t<F&>;
  shard(target);
  auto* c = new ForeignCall<F, T>{std::optional<F>(std::move(fn)), {}};
  std::future<T> future = c->promise.get_future();
  if (!post(target, Work{&ForeignCall<F, T>::request, c})) ForeignCall<F, T>::request(c, false);
  return future;
}

}  // namespace shardloop
