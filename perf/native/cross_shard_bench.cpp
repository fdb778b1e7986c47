// Cross-shard messaging between two pinned shards:
//  1. throughput: shard 0 posts small Work items to shard 1 in bursts (at
//     most kWindow in flight), shard 1 drains them in batches;
//  2. wake-up latency: shard 0 posts one item every `gap` and shard 1 notes
//     how long after the post it ran: first asleep in epoll between items
//     (1 ms apart, shard 0 asleep too: `wake_latency_us`), then with shard 0
//     busy, gaps of 50 us and 1 ms, idle polling off and on
//     (`wake_latency_runs`, with shard 1's CPU use: what the polling costs).
// Prints one JSON object.
//   cross_shard_bench [messages=20000000] [samples=2000] [idle_poll_us=200]
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "shardloop/clock.hpp"
#include "shardloop/runtime.hpp"
#include "shardloop/timer.hpp"

using namespace shardloop;

namespace {

constexpr std::uint64_t kWindow = 1 << 16;
constexpr std::uint64_t kBurst = 4096;

struct alignas(64) Received {
  std::atomic<std::uint64_t> n{0};
};
Received received;
std::uint64_t received_local = 0;  // shard 1 only
std::uint64_t total = 0;
double t_start = 0, t_end = 0;

void on_message(void*, bool run) noexcept {
  if (!run) return;
  // Published once per item with a relaxed store: the producer reads it
  // only to keep its window.
  received.n.store(++received_local, std::memory_order_relaxed);
  if (received_local == total) {
    t_end = monotonic_now();
    Runtime::current()->stop();
  }
}

std::uint64_t sent = 0;
void send_burst(Runtime& rt, Loop& loop) {
  std::uint64_t limit = std::min(total, received.n.load(std::memory_order_relaxed) + kWindow);
  std::uint64_t n = std::min<std::uint64_t>(kBurst, limit - sent);
  for (std::uint64_t i = 0; i < n; ++i) rt.post(1, Work{&on_message, nullptr});
  sent += n;
  if (sent < total) loop.call_soon(Work{[](void* l, bool run) noexcept {
                                          if (run) send_burst(*Runtime::current(), *static_cast<Loop*>(l));
                                        },
                                        &loop});
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One wake-up latency run: shard 0 posts one item every `gap_us` (the next
// once the last has run), shard 1 notes how long after the post it ran.
struct LatencyRun {
  unsigned gap_us = 1000;
  unsigned idle_poll_us = 0;
  // Timer: shard 0 sleeps between posts too. Busy: shard 0 stays awake and
  // watches the clock, as a shard busy with other work would.
  bool timer_paced = true;
  int samples = 0;
  std::vector<double> us;  // shard 1 only
  std::uint64_t wakeups = 0;
  double receiver_cpu_pct = 0;  // shard 1's CPU time over the run's wall time
};

struct Pacer {
  Runtime* rt;
  LatencyRun* run;
  int sent = 0;
  double next = 0;
  double posted_at = 0;  // written before the post that carries it
  std::atomic<int> received{0};

  // Shard 0: the next post, if it is due and the last one has arrived.
  void maybe_post() {
    if (sent == run->samples || received.load(std::memory_order_acquire) != sent) return;
    double now = monotonic_now();
    if (now < next) return;
    ++sent;
    next = now + run->gap_us * 1e-6;
    posted_at = monotonic_now();
    rt->post(1, Work{&Pacer::arrived, this});
  }
  static void arrived(void* ctx, bool run) noexcept {
    auto* p = static_cast<Pacer*>(ctx);
    if (!run) return;
    p->run->us.push_back((monotonic_now() - p->posted_at) * 1e6);
    p->received.fetch_add(1, std::memory_order_release);
    if (static_cast<int>(p->run->us.size()) == p->run->samples) p->rt->stop();
  }
  static void spin(void* ctx, bool run) noexcept {
    auto* p = static_cast<Pacer*>(ctx);
    if (!run) return;
    p->maybe_post();
    if (p->sent < p->run->samples) Loop::current()->call_soon(Work{&Pacer::spin, p});
  }
};

void measure(LatencyRun& run) {
  Runtime::Options o;
  o.shards = 2;
  o.idle_poll_us = run.idle_poll_us;
  Runtime rt(o);
  Pacer pacer{&rt, &run};
  std::unique_ptr<Timer> tick;
  double cpu0 = 0, wall0 = 0;
  rt.run([&](unsigned s) {
    if (s == 1) {
      cpu0 = thread_cpu_s();
      wall0 = monotonic_now();
      rt.at_exit([&] { run.receiver_cpu_pct = 100.0 * (thread_cpu_s() - cpu0) / (monotonic_now() - wall0); });
      return;
    }
    if (!run.timer_paced) {
      rt.loop_of(0)->call_soon(Work{&Pacer::spin, &pacer});
      return;
    }
    tick = std::make_unique<Timer>(*rt.loop_of(0), [&] { pacer.maybe_post(); });
    tick->start(run.gap_us * 1e-6, run.gap_us * 1e-6);
    rt.at_exit([&] { tick.reset(); });
  });
  run.wakeups = rt.stats().wakeups;
}

void print_latency(const LatencyRun& r) {
  std::printf(
      "{\"gap_us\": %u, \"idle_poll_us\": %u, \"sender\": \"%s\", \"samples\": %zu, \"p50\": %.2f, \"p90\": %.2f, "
      "\"p99\": %.2f, \"max\": %.2f, \"wakeups\": %llu, \"receiver_cpu_pct\": %.1f}",
      r.gap_us, r.idle_poll_us, r.timer_paced ? "timer" : "busy", r.us.size(), pct(r.us, 50), pct(r.us, 90),
      pct(r.us, 99), r.us.empty() ? 0.0 : *std::max_element(r.us.begin(), r.us.end()),
      static_cast<unsigned long long>(r.wakeups), r.receiver_cpu_pct);
}

}  // namespace

int main(int argc, char** argv) {
  total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20000000;
  int samples = argc > 2 ? std::atoi(argv[2]) : 2000;
  unsigned idle_poll_us = argc > 3 ? static_cast<unsigned>(std::atoi(argv[3])) : 200;
  Runtime::Options o;
  o.shards = 2;
  o.ring_capacity = kWindow;  // the window fits: no ring has to grow
  Runtime rt(o);

  rt.run([&](unsigned s) {
    if (s != 0) return;
    t_start = monotonic_now();
    send_burst(rt, *rt.loop_of(0));
  });
  double seconds = t_end - t_start;
  Runtime::Stats st = rt.stats();

  // The first run keeps the figures earlier reports quote (idle polling
  // off, shard 0 asleep between posts); the others show idle polling with
  // a gap inside its window and one past it.
  std::vector<LatencyRun> runs;
  auto add = [&](unsigned gap, unsigned poll, bool timer) {
    LatencyRun r;
    r.gap_us = gap;
    r.idle_poll_us = poll;
    r.timer_paced = timer;
    r.samples = samples;
    runs.push_back(std::move(r));
  };
  add(1000, 0, true);
  for (unsigned gap : {50u, 1000u})
    for (unsigned poll : {0u, idle_poll_us}) add(gap, poll, false);
  for (auto& r : runs) measure(r);
  const LatencyRun& base = runs.front();
  std::printf(
      "{\"pinned\": %s, \"messages\": %llu, \"seconds\": %.4f, \"messages_per_s\": %.0f, "
      "\"wakeups_during_throughput\": %llu, \"ring_overflows\": %llu, "
      "\"wake_latency_us\": {\"samples\": %zu, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"max\": %.2f}, "
      "\"wakeups_during_latency\": %llu, \"wake_latency_runs\": [",
      rt.pinned() ? "true" : "false", static_cast<unsigned long long>(total), seconds,
      static_cast<double>(total) / seconds, static_cast<unsigned long long>(st.wakeups),
      static_cast<unsigned long long>(st.overflows), base.us.size(), pct(base.us, 50), pct(base.us, 90),
      pct(base.us, 99), base.us.empty() ? 0.0 : *std::max_element(base.us.begin(), base.us.end()),
      static_cast<unsigned long long>(base.wakeups));
  for (std::size_t i = 0; i < runs.size(); ++i) {
    if (i) std::printf(", ");
    print_latency(runs[i]);
  }
  std::printf("]}\n");
  return 0;
}
