// The floor under cross_shard_bench's wake-up latency on this machine: two
// pinned threads hand a token back and forth through
//   eventfd: an eventfd watched by epoll_wait (what uv_async_send wakes),
//   futex:   FUTEX_WAIT / FUTEX_WAKE on a shared word,
//   spin:    a shared atomic the waiter polls (no kernel, no sleep).
// The sender notes the time right before it signals, the waiter right after
// it returns: one-way latency. With a gap the waiter idles (and its CPU
// halts) between tokens, as a shard does between rare messages; with no gap
// the token goes straight back (the CPU may not have gone idle yet).
// Prints one JSON object per mechanism and gap.
//   wake_floor [samples=2000] [gap_us=1000]
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

double now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// One direction of the hand-off.
class Channel {
 public:
  virtual ~Channel() = default;
  virtual void signal() = 0;
  virtual void wait() = 0;
};

class EventfdChannel : public Channel {
 public:
  EventfdChannel() : efd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), ep_(epoll_create1(EPOLL_CLOEXEC)) {
    if (efd_ < 0 || ep_ < 0) std::abort();
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, efd_, &ev) != 0) std::abort();
  }
  ~EventfdChannel() override {
    close(efd_);
    close(ep_);
  }
  void signal() override {
    std::uint64_t one = 1;
    if (write(efd_, &one, sizeof one) != sizeof one) std::abort();
  }
  void wait() override {
    std::uint64_t v;
    for (;;) {
      epoll_event ev;
      if (epoll_wait(ep_, &ev, 1, -1) == 1 && read(efd_, &v, sizeof v) == sizeof v) return;
    }
  }

 private:
  int efd_, ep_;
};

class FutexChannel : public Channel {
 public:
  void signal() override {
    word_.store(1, std::memory_order_release);
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }
  void wait() override {
    while (word_.exchange(0, std::memory_order_acquire) == 0)
      syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word_), FUTEX_WAIT_PRIVATE, 0, nullptr, nullptr, 0);
  }

 private:
  alignas(64) std::atomic<std::uint32_t> word_{0};
};

class SpinChannel : public Channel {
 public:
  void signal() override { word_.store(1, std::memory_order_release); }
  void wait() override {
    while (word_.load(std::memory_order_relaxed) == 0) cpu_relax();
    word_.store(0, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
  }

 private:
  alignas(64) std::atomic<std::uint32_t> word_{0};
};

void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double pct(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, static_cast<std::size_t>(p / 100.0 * static_cast<double>(sorted.size())))];
}

// Sender on cpu_a, waiter on cpu_b. The sender sleeps `gap_us` between
// tokens (nanosleep: its own CPU idles too, as shard 0 does between its
// timer ticks).
std::vector<double> measure(Channel& there, Channel& back, int samples, int gap_us, int cpu_a, int cpu_b) {
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(samples));
  alignas(64) static std::atomic<double> sent_at{0};
  std::thread waiter([&] {
    pin(cpu_b);
    for (int i = 0; i < samples; ++i) {
      there.wait();
      lat.push_back(now_us() - sent_at.load(std::memory_order_relaxed));
      back.signal();
    }
  });
  pin(cpu_a);
  timespec gap{gap_us / 1000000, static_cast<long>(gap_us % 1000000) * 1000};
  for (int i = 0; i < samples; ++i) {
    if (gap_us > 0) nanosleep(&gap, nullptr);
    sent_at.store(now_us(), std::memory_order_relaxed);
    there.signal();
    back.wait();
  }
  waiter.join();
  std::sort(lat.begin(), lat.end());
  return lat;
}

template <typename C>
void report(const char* name, int samples, int gap_us, int cpu_a, int cpu_b) {
  C there, back;
  auto lat = measure(there, back, samples, gap_us, cpu_a, cpu_b);
  std::printf("{\"mechanism\": \"%s\", \"gap_us\": %d, \"samples\": %zu, \"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"max\": %.2f}\n",
              name, gap_us, lat.size(), pct(lat, 50), pct(lat, 90), pct(lat, 99), lat.empty() ? 0.0 : lat.back());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int samples = argc > 1 ? std::atoi(argv[1]) : 2000;
  int gap_us = argc > 2 ? std::atoi(argv[2]) : 1000;
  // The first two CPUs of our mask, as Runtime pins shards 0 and 1.
  cpu_set_t mask;
  CPU_ZERO(&mask);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof mask, &mask) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &mask)) cpus.push_back(c);
  int cpu_a = cpus.size() >= 2 ? cpus[0] : -1, cpu_b = cpus.size() >= 2 ? cpus[1] : -1;
  for (int gap : {gap_us, 0}) {
    report<EventfdChannel>("eventfd+epoll", samples, gap, cpu_a, cpu_b);
    report<FutexChannel>("futex", samples, gap, cpu_a, cpu_b);
    // A spinning waiter needs a CPU of its own: pointless unpinned.
    if (cpu_b >= 0) report<SpinChannel>("spin", samples, gap, cpu_a, cpu_b);
  }
  return 0;
}
