// Cross-shard messaging between two pinned shards:
//  1. throughput: shard 0 posts small Work items to shard 1 in bursts (at
//     most kWindow in flight), shard 1 drains them in batches;
//  2. wake-up latency: shard 1 is asleep in epoll; shard 0 posts one item
//     every millisecond and shard 1 notes how long after the post it ran.
// Prints one JSON object.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

struct LatencyRun {
  int samples = 0;
  int sent = 0;
  std::vector<double> us;
  double posted_at = 0;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  total = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20000000;
  int samples = argc > 2 ? std::atoi(argv[2]) : 2000;
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

  Runtime rt2(o);
  static LatencyRun lat;
  lat.samples = samples;
  std::unique_ptr<Timer> tick;
  rt2.run([&](unsigned s) {
    if (s != 0) return;
    tick = std::make_unique<Timer>(*rt2.loop_of(0), [&] {
      if (lat.sent == lat.samples) return;
      ++lat.sent;
      lat.posted_at = monotonic_now();
      rt2.post(1, [&] {
        lat.us.push_back((monotonic_now() - lat.posted_at) * 1e6);
        if (static_cast<int>(lat.us.size()) == lat.samples) rt2.stop();
      });
    });
    tick->start(0.001, 0.001);
    rt2.at_exit([&] { tick.reset(); });
  });
  Runtime::Stats st2 = rt2.stats();
  std::printf(
      "{\"pinned\": %s, \"messages\": %llu, \"seconds\": %.4f, \"messages_per_s\": %.0f, "
      "\"wakeups_during_throughput\": %llu, \"ring_overflows\": %llu, "
      "\"wake_latency_us\": {\"samples\": %zu, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"max\": %.2f}, "
      "\"wakeups_during_latency\": %llu}\n",
      rt.pinned() ? "true" : "false", static_cast<unsigned long long>(total), seconds,
      static_cast<double>(total) / seconds, static_cast<unsigned long long>(st.wakeups),
      static_cast<unsigned long long>(st.overflows), lat.us.size(), pct(lat.us, 50), pct(lat.us, 90),
      pct(lat.us, 99), lat.us.empty() ? 0.0 : *std::max_element(lat.us.begin(), lat.us.end()),
      static_cast<unsigned long long>(st2.wakeups));
  return 0;
}
