// Shared helpers for the engine tests (not a test source: the CMake glob only
// picks up *_test.cpp).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "shardloop/shardloop.hpp"

namespace shardloop_test {

// A Work whose fn counts how it was finished. Each Work made from a Counter
// must end with exactly one of runs/discards incremented.
struct Counter {
  int runs = 0;
  int discards = 0;
  int total() const { return runs + discards; }
  shardloop::Work work() { return shardloop::Work{&Counter::fn, this}; }

 private:
  static void fn(void* ctx, bool run) noexcept {
    auto* self = static_cast<Counter*>(ctx);
    if (run)
      ++self->runs;
    else
      ++self->discards;
  }
};

// Fails a test that would otherwise hang (a loop that is never woken): if
// not disarmed within `seconds`, prints `what` and aborts the test binary, so
// ctest reports the failure at once instead of after its own timeout.
class Watchdog {
 public:
  explicit Watchdog(std::string what, double seconds = 5.0)
      : what_(std::move(what)), thread_([this, seconds] {
          std::unique_lock<std::mutex> lock(mu_);
          if (!cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return done_; })) {
            std::fprintf(stderr, "WATCHDOG: %s did not finish within %.1f s; aborting\n",
                         what_.c_str(), seconds);
            std::fflush(stderr);
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// A one-shot flag another thread can wait on (with a timeout, so a test
// fails instead of hanging).
class Latch {
 public:
  void set() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      set_ = true;
    }
    cv_.notify_all();
  }
  bool wait(double seconds = 5.0) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// A blocking client socket connected to 127.0.0.1:port, or -1.
inline int connect_to(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A TCP listener on 127.0.0.1, any port; -1 on failure.
inline int listen_on_loopback() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline std::uint16_t port_of(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.sin_port);
}

// Runs `fn` in a forked child whose seccomp filter makes io_uring_setup
// fail with EPERM (what container runtimes' default profiles do); true
// when the child ran and `fn` returned true.
template <typename F>
bool in_child_without_io_uring(F fn) {
  pid_t pid = ::fork();
  if (pid == 0) {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
      ::_exit(2);
    ::_exit(fn() ? 0 : 1);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Reads until `out` holds n bytes; false on EOF or error first.
inline bool read_exactly(int fd, std::string& out, std::size_t n) {
  char buf[4096];
  while (out.size() < n) {
    ssize_t got = ::read(fd, buf, std::min(sizeof buf, n - out.size()));
    if (got <= 0) return false;
    out.append(buf, static_cast<std::size_t>(got));
  }
  return true;
}

// Runs `n` iterations of `loop`, each with work ready, so none blocks: libuv
// still polls in each while it has active or closing handles (level-triggered
// readiness is reported once per iteration, close callbacks run).
inline void spin(shardloop::Loop& loop, int n) {
  int left = n;
  std::function<void()> step = [&] {
    if (--left > 0)
      loop.call_soon(step);
    else
      loop.stop();
  };
  loop.call_soon(step);
  loop.run();
}

// Runtime options for tests: `shards` shards, never pinned (the test
// machine is shared: do not fight over cores).
inline shardloop::Runtime::Options unpinned(unsigned shards) {
  shardloop::Runtime::Options o;
  o.shards = shards;
  o.pin = false;
  return o;
}

}  // namespace shardloop_test
