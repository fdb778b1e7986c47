// Helpers shared by the Stream tests (stream_test.cpp for what both
// backends share, backend_epoll_test.cpp and backend_uring_test.cpp for
// what is one backend's own): an owner that records what its stream
// reports, and a loop driven one iteration at a time.
#pragma once

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"
#include "test_support.hpp"

namespace shardloop_test {

// What a stream reported, in order.
struct Events {
  std::string data;
  std::vector<int> statuses;  // read statuses (UV_EOF, errors)
  std::vector<int> writes;    // on_write statuses
  std::vector<std::size_t> write_queued;  // on_write's `queued`, same order
  std::vector<int> shutdowns;
  int closes = 0;
  std::string order;  // one letter per report: d(ata), s(tatus), w(rite), h (shutdown), c(lose)
  std::size_t deliveries = 0;
  std::size_t largest = 0;         // the largest single delivery
  std::function<void()> on_data;   // runs after each data delivery
  std::function<void()> on_status; // runs after each status delivery

  static shardloop::Stream::Callbacks callbacks(Events* e) {
    return shardloop::Stream::Callbacks{
        e,
        [](void* ctx, const char* data, ssize_t n) noexcept {
          auto* self = static_cast<Events*>(ctx);
          if (n > 0) {
            self->data.append(data, static_cast<std::size_t>(n));
            self->order += 'd';
            ++self->deliveries;
            if (static_cast<std::size_t>(n) > self->largest) self->largest = static_cast<std::size_t>(n);
            if (self->on_data) self->on_data();
          } else {
            self->statuses.push_back(static_cast<int>(n));
            self->order += 's';
            if (self->on_status) self->on_status();
          }
        },
        [](void* ctx, int status, std::size_t queued) noexcept {
          auto* self = static_cast<Events*>(ctx);
          self->writes.push_back(status);
          self->write_queued.push_back(queued);
          self->order += 'w';
        },
        [](void* ctx, int status) noexcept {
          static_cast<Events*>(ctx)->shutdowns.push_back(status);
          static_cast<Events*>(ctx)->order += 'h';
        },
        [](void* ctx) noexcept {
          ++static_cast<Events*>(ctx)->closes;
          static_cast<Events*>(ctx)->order += 'c';
        },
    };
  }
};

// A loop on the chosen backend, run from inside its own callbacks.
class StreamHarness {
 public:
  // Call before anything runs (a fixture's SetUp).
  void use_ring(bool ring) {
    ring_ = ring;
    if (ring) ASSERT_TRUE(loop_.set_io_backend(shardloop::IoBackend::kIoUring, true));
  }

  // Runs the loop: `step` is called once per iteration (from a callback)
  // until it returns true.
  void run_until(std::function<bool()> step, const char* what) {
    Watchdog dog(what, 20);
    struct Ctx {
      shardloop::Loop* loop;
      std::function<bool()> step;
      static void fn(void* p, bool run) noexcept {
        auto* c = static_cast<Ctx*>(p);
        if (!run) return;
        if (c->step())
          c->loop->stop();
        else
          c->loop->call_soon(shardloop::Work{&Ctx::fn, c});
      }
    } ctx{&loop_, std::move(step)};
    loop_.call_soon(shardloop::Work{&Ctx::fn, &ctx});
    loop_.run();
  }
  void iterations(int n) {
    run_until([&n] { return --n <= 0; }, "iterations");
  }
  // Opens a stream on `fd` from inside the loop (so an io_uring loop gives
  // it the ring) and checks it got the backend asked for (pipes: epoll).
  shardloop::Stream* open(int fd, Events* events, shardloop::Stream::Kind kind = shardloop::Stream::Kind::kSocket) {
    shardloop::Stream* s = nullptr;
    run_until(
        [&] {
          s = shardloop::Stream::open(loop_, fd, Events::callbacks(events), kind);
          return true;
        },
        "open");
    EXPECT_EQ(s->uses_ring(), ring_ && kind == shardloop::Stream::Kind::kSocket);
    return s;
  }
  // A stream on one end of a socketpair; the other end is returned.
  int open_pair(shardloop::Stream** out, Events* events) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    *out = open(fds[0], events);
    return fds[1];
  }

 protected:
  shardloop::Loop loop_;
  bool ring_ = false;
};

// `n` bytes that differ with position (a byte lost, repeated or reordered
// anywhere changes what follows), different for each `seed`.
inline std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n + 8, '\0');
  std::uint64_t x = 0x9E3779B97F4A7C15ull ^ seed;
  // Eight bytes a step: sanitizer builds check each store.
  for (std::size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&s[i], &x, 8);
  }
  s.resize(n);
  return s;
}

// 64 MiB each way at once through a stream on `h`'s backend: the peer
// (two plain threads) sends one pattern and reads until EOF, the stream
// writes another in uneven pieces, then shuts down. Both arrive byte-exact.
inline void transfer_both_ways(StreamHarness& h) {
  constexpr std::size_t kBytes = 64u << 20;
  const std::string out = pattern(kBytes, 1), in = pattern(kBytes, 2);
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Events ev;
  shardloop::Stream* s = h.open(fds[0], &ev);
  const int peer = fds[1];
  ASSERT_EQ(s->read_start(), 0);
  std::string got;
  std::thread reader([&] {
    char buf[64 * 1024];
    for (;;) {
      ssize_t n = ::read(peer, buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
  });
  std::thread writer([&] {
    std::size_t at = 0;
    while (at < in.size()) {
      ssize_t n = ::send(peer, in.data() + at, in.size() - at, MSG_NOSIGNAL);
      if (n <= 0) break;
      at += static_cast<std::size_t>(n);
    }
    ::shutdown(peer, SHUT_WR);
  });
  std::size_t at = 0;
  for (std::size_t piece = 1000; at < out.size(); piece = piece * 3 % 1500007 + 4096) {
    const std::size_t n = std::min(piece, out.size() - at);
    EXPECT_EQ(s->write(out.data() + at, n), 0);
    at += n;
  }
  // No ASSERT while the peer's threads run: they are joined below.
  EXPECT_EQ(s->shutdown(), 0);
  h.run_until([&] { return !ev.statuses.empty() && !ev.shutdowns.empty(); }, "64 MiB both ways");
  writer.join();
  reader.join();
  EXPECT_EQ(ev.statuses, std::vector<int>{UV_EOF});
  EXPECT_EQ(ev.shutdowns, std::vector<int>{0});
  EXPECT_EQ(ev.data.size(), in.size());
  EXPECT_TRUE(ev.data == in) << "the stream's reads differ from what the peer sent";
  EXPECT_EQ(got.size(), out.size());
  EXPECT_TRUE(got == out) << "the peer's reads differ from what the stream wrote";
  s->release();
  h.iterations(2);
  EXPECT_EQ(ev.closes, 1);
  ::close(peer);
}

}  // namespace shardloop_test
