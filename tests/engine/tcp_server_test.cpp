// TcpServer on a Runtime: real sockets, connections spread by SO_REUSEPORT
// over the shards, every byte echoed by the shard that accepted it, on
// each backend (io_uring: accepted by the ring's multishot accept); and
// the native Timer.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/runtime.hpp"
#include "shardloop/tcp_server.hpp"
#include "shardloop/timer.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Connection;
using shardloop::Loop;
using shardloop::Runtime;
using shardloop::TcpHandlers;
using shardloop::TcpServer;
using shardloop::Timer;
using shardloop_test::Latch;
using shardloop_test::Watchdog;
using shardloop_test::connect_to;
using shardloop_test::read_exactly;

// The server tests run on both I/O backends (GetParam(): io_uring).
class ServerTest : public ::testing::TestWithParam<bool> {
 protected:
  Runtime::Options two_shards() const {
    Runtime::Options o = shardloop_test::unpinned(2);
    o.io_uring = GetParam();
    return o;
  }
};

TEST_P(ServerTest, EchoesOnEveryShard) {
  Watchdog dog("tcp echo", 60);
  constexpr int kConns = 200;
  Runtime rt(two_shards());
  std::atomic<int> opened[2] = {0, 0};
  std::atomic<int> closed{0};
  std::atomic<int> wrong_shard{0};
  std::atomic<int> wrong_backend{0};
  // Connections the shard's ring accepted, as each new one sees it.
  std::atomic<std::uint64_t> ring_accepts[2] = {0, 0};
  TcpHandlers h;
  h.on_connection = [&](Connection& c) {
    if (static_cast<int>(c.shard()) != Runtime::this_shard()) ++wrong_shard;
    // The ring exists on exactly the io_uring runs (this kernel has one).
    if ((c.loop().ring() != nullptr) != GetParam()) ++wrong_backend;
    opened[c.shard()].fetch_add(1);
    ring_accepts[c.shard()].store(c.loop().io_stats().accept_cqes);
  };
  h.on_data = [&](Connection& c, const char* data, std::size_t len) {
    if (static_cast<int>(c.shard()) != Runtime::this_shard()) ++wrong_shard;
    c.write(data, len);
  };
  h.on_close = [&](Connection& c) {
    EXPECT_EQ(c.error(), 0);
    if (closed.fetch_add(1) + 1 == kConns) Runtime::current()->stop();
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  ASSERT_NE(server->port(), 0);
  std::atomic<int> echoed{0};
  std::thread client([&] {
    std::vector<int> fds;
    for (int i = 0; i < kConns; ++i) {
      int fd = connect_to(server->port());
      ASSERT_GE(fd, 0);
      fds.push_back(fd);
    }
    for (int i = 0; i < kConns; ++i) {
      // Big enough to arrive in pieces sometimes: the echo must be whole.
      std::string msg(3000 + i, static_cast<char>('a' + i % 26));
      ASSERT_EQ(::write(fds[i], msg.data(), msg.size()), static_cast<ssize_t>(msg.size()));
      std::string back;
      ASSERT_TRUE(read_exactly(fds[i], back, msg.size()));
      if (back == msg) ++echoed;
    }
    for (int fd : fds) ::close(fd);
  });
  rt.run();
  client.join();
  EXPECT_EQ(echoed.load(), kConns);
  EXPECT_EQ(closed.load(), kConns);
  EXPECT_EQ(wrong_shard.load(), 0);
  EXPECT_EQ(wrong_backend.load(), 0);
  auto per = server->connections_per_shard();
  ASSERT_EQ(per.size(), 2u);
  EXPECT_EQ(per[0] + per[1], static_cast<std::uint64_t>(kConns));
  EXPECT_EQ(per[0], static_cast<std::uint64_t>(opened[0].load()));
  EXPECT_EQ(per[1], static_cast<std::uint64_t>(opened[1].load()));
  // 200 connections hashed over two sockets: both get some (all on one has
  // odds of 2^-199).
  EXPECT_GT(per[0], 0u);
  EXPECT_GT(per[1], 0u);
  // On io_uring every connection came from the ring's accept; on epoll none.
  for (unsigned s = 0; s < 2; ++s) EXPECT_EQ(ring_accepts[s].load(), GetParam() ? per[s] : 0u) << "shard " << s;
  std::printf("connections per shard: %llu %llu\n", static_cast<unsigned long long>(per[0]),
              static_cast<unsigned long long>(per[1]));
}

// `n` bytes that differ with position and with `seed`.
std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = 2654435761u * (seed + 1);
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

// A thousand connections open at once, each sending its own bytes before
// any echo is read: every byte comes back, in order, on its connection.
TEST_P(ServerTest, ThousandConnectionsAtOnceEchoByteExact) {
  Watchdog dog("1000 connections", 60);
  constexpr int kConns = 1000;
  Runtime rt(two_shards());
  std::atomic<int> closed{0};
  std::atomic<int> errors{0};
  TcpHandlers h;
  h.on_data = [](Connection& c, const char* data, std::size_t len) { c.write(data, len); };
  h.on_close = [&](Connection& c) {
    if (c.error() != 0) ++errors;
    if (closed.fetch_add(1) + 1 == kConns) Runtime::current()->stop();
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  int exact = 0;
  std::thread client([&] {
    std::vector<int> fds;
    for (int i = 0; i < kConns; ++i) fds.push_back(connect_to(server->port()));
    std::vector<std::string> sent;
    for (int i = 0; i < kConns; ++i) {
      sent.push_back(pattern(1 + static_cast<std::size_t>(i) * 37 % 9000, static_cast<unsigned>(i)));
      if (fds[i] < 0 || ::write(fds[i], sent[i].data(), sent[i].size()) != static_cast<ssize_t>(sent[i].size()))
        continue;
    }
    for (int i = 0; i < kConns; ++i) {
      std::string back;
      if (fds[i] >= 0 && read_exactly(fds[i], back, sent[i].size()) && back == sent[i]) ++exact;
    }
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  });
  rt.run();
  client.join();
  EXPECT_EQ(exact, kConns);
  EXPECT_EQ(errors.load(), 0);
  auto per = server->connections_per_shard();
  EXPECT_EQ(per[0] + per[1], static_cast<std::uint64_t>(kConns));
}

// Reads shard 0's accept_cqes on its thread with a plain Work and a flag:
// no std::future, whose virtual calls UBSan checks through a pipe it cannot
// make while the test has no descriptor to spare.
struct StatsProbe {
  Loop* loop;
  std::atomic<bool> answered{false};
  std::uint64_t value = 0;

  std::uint64_t accept_cqes(Runtime& rt) {
    answered.store(false);
    if (!rt.post(0, shardloop::Work{&StatsProbe::read, this})) return 0;
    while (!answered.load(std::memory_order_acquire)) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return value;
  }
  static void read(void* ctx, bool run) noexcept {
    auto* self = static_cast<StatsProbe*>(ctx);
    if (run) self->value = self->loop->io_stats().accept_cqes;
    self->answered.store(true, std::memory_order_release);
  }
};

// One connection sends `msg` and reads its echo; false if it failed.
bool echo_once(int fd, const std::string& msg) {
  std::string back;
  return fd >= 0 && ::write(fd, msg.data(), msg.size()) == static_cast<ssize_t>(msg.size()) &&
         read_exactly(fd, back, msg.size()) && back == msg;
}

// Out of descriptors: the accept fails (EMFILE, from a lowered
// RLIMIT_NOFILE), the server stays up, and once descriptors are back the
// waiting connection and a new one are served. epoll retries at each
// iteration; the ring's accept stops and resumes a second later.
TEST_P(ServerTest, AcceptOutOfDescriptorsDoesNotStopTheServer) {
  Watchdog dog("accept EMFILE", 30);
  Runtime rt([&] {
    Runtime::Options o = shardloop_test::unpinned(1);
    o.io_uring = GetParam();
    return o;
  }());
  TcpHandlers h;
  h.on_data = [](Connection& c, const char* data, std::size_t len) { c.write(data, len); };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  std::uint64_t accepted_while_limited = 99, ring_accepts = 0;
  bool warm = false, first_echoed = false, second_echoed = false;
  std::thread client([&] {
    // Served once first: the listener is set up, and every path the
    // window below takes has run (so nothing needs a new descriptor).
    int warmup = connect_to(server->port());
    warm = echo_once(warmup, pattern(100, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(server->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int first = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    StatsProbe probe{rt.loop_of(0)};
    const std::uint64_t ring_before = probe.accept_cqes(rt);
    // No descriptor can be made from here on: the lowest free one is the limit.
    const int lowest_free = ::dup(0);
    ::close(lowest_free);
    rlimit low = saved;
    low.rlim_cur = static_cast<rlim_t>(lowest_free);
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    // The kernel completes the handshake; the server's accept fails.
    EXPECT_EQ(::connect(first, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    if (GetParam()) {
      // The ring's accept took it (above the limit) and held it: EMFILE.
      while ((ring_accepts = probe.accept_cqes(rt) - ring_before) == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } else {
      for (int i = 0; i < 20; ++i) probe.accept_cqes(rt);  // iterations that tried accept4
    }
    accepted_while_limited = server->connections_per_shard()[0];
    EXPECT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);
    first_echoed = echo_once(first, pattern(5000, 1));
    int second = connect_to(server->port());
    second_echoed = echo_once(second, pattern(7000, 2));
    ::close(warmup);
    ::close(first);
    if (second >= 0) ::close(second);
    rt.stop();
  });
  rt.run();
  client.join();
  ::setrlimit(RLIMIT_NOFILE, &saved);  // whatever happened above
  EXPECT_TRUE(warm);
  EXPECT_EQ(accepted_while_limited, 1u);  // the warm-up connection only
  if (GetParam()) EXPECT_EQ(ring_accepts, 1u);
  EXPECT_TRUE(first_echoed);
  EXPECT_TRUE(second_echoed);
  EXPECT_EQ(server->connections_per_shard()[0], 3u);
}

// close() while clients keep connecting (and the ring's accept is armed):
// every connection the server took is served to the end or closed with
// it; after the close the port refuses; the runtime then shuts down clean.
TEST_P(ServerTest, CloseDuringConnectionStorm) {
  Watchdog dog("close during storm", 60);
  Runtime rt(two_shards());
  std::atomic<int> opened{0};
  TcpHandlers h;
  h.on_connection = [&](Connection&) { opened.fetch_add(1); };
  h.on_data = [](Connection& c, const char* data, std::size_t len) { c.write(data, len); };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  int echoed = 0, refused_after = 0, burst_echoed = 0, burst_failed = 0;
  std::thread client([&] {
    std::vector<int> fds;
    const std::string msg = pattern(100, 7);
    for (int i = 0; i < 400; ++i) {
      if (i == 200) {
        // A burst the server may be accepting when it closes: each one is
        // served to the end, or refused or reset (never half-served).
        std::vector<int> burst;
        for (int k = 0; k < 50; ++k) burst.push_back(connect_to(server->port()));
        server->close();
        for (unsigned s = 0; s < 2; ++s) rt.invoke_on(s, [] {}).get();  // both have closed
        for (int fd : burst) {
          std::string back;
          if (fd >= 0 && ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size()) &&
              read_exactly(fd, back, msg.size()) && back == msg)
            ++burst_echoed;
          else
            ++burst_failed;
          if (fd >= 0) ::close(fd);
        }
      }
      int fd = connect_to(server->port());
      if (fd < 0) {
        if (i >= 200 && errno == ECONNREFUSED) ++refused_after;
        continue;
      }
      fds.push_back(fd);
      std::string back;
      if (::write(fd, msg.data(), msg.size()) == static_cast<ssize_t>(msg.size()) && read_exactly(fd, back, msg.size()) &&
          back == msg)
        ++echoed;
    }
    rt.stop();
    for (int fd : fds) ::close(fd);
  });
  rt.run();
  client.join();
  EXPECT_EQ(echoed, 200);
  EXPECT_EQ(refused_after, 200);
  EXPECT_EQ(burst_echoed + burst_failed, 50);
  EXPECT_EQ(opened.load(), 200 + burst_echoed);
  auto per = server->connections_per_shard();
  EXPECT_EQ(per[0] + per[1], static_cast<std::uint64_t>(200 + burst_echoed));
  std::printf("burst at close: %d served, %d refused or reset\n", burst_echoed, burst_failed);
}

// Closing the server stops accepting on every shard; open connections stay
// until the runtime shuts down, which closes them (on_close runs).
TEST_P(ServerTest, CloseStopsListeningShutdownClosesConnections) {
  Watchdog dog("tcp close", 30);
  Runtime rt(two_shards());
  std::atomic<int> opened{0}, closed{0};
  TcpHandlers h;
  h.on_connection = [&](Connection&) { opened.fetch_add(1); };
  h.on_close = [&](Connection&) { closed.fetch_add(1); };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  Latch done;
  int refused_errno = 0;
  std::thread client([&] {
    int fd = connect_to(server->port());
    EXPECT_GE(fd, 0);
    while (opened.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    server->close();
    // Both shards have run the close once they answer a call after it.
    for (unsigned s = 0; s < 2; ++s) rt.invoke_on(s, [] {}).get();
    int again = connect_to(server->port());
    refused_errno = again < 0 ? errno : 0;
    if (again >= 0) ::close(again);
    rt.stop();
    done.wait(10);
    ::close(fd);
  });
  rt.run();
  done.set();
  client.join();
  EXPECT_EQ(refused_errno, ECONNREFUSED);
  EXPECT_EQ(opened.load(), 1);
  EXPECT_EQ(closed.load(), 1);  // by the loop closing at shutdown
}

TEST(RuntimeTcpServer, BadHostAndBusyPortThrow) {
  Runtime rt(shardloop_test::unpinned(2));
  TcpServer::Options o;
  o.host = "not-an-address";
  EXPECT_THROW(TcpServer::listen(rt, o, {}), std::system_error);
  // A port taken by a socket without SO_REUSEPORT cannot be shared.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  o.host = "127.0.0.1";
  o.port = ntohs(addr.sin_port);
  EXPECT_THROW(TcpServer::listen(rt, o, {}), std::system_error);
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Backends, ServerTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

TEST(RuntimeTimer, OnceRepeatStopAndLoopClose) {
  Watchdog dog("timer");
  Loop loop;
  int once = 0, ticks = 0;
  Timer t1(loop, [&] { ++once; });
  Timer t2(loop, [&] {
    if (++ticks == 3) loop.stop();
  });
  Timer never(loop, [] { ADD_FAILURE() << "stopped timer fired"; });
  double start = loop.time();
  t1.start(0.002);
  t2.start(0.001, 0.003);
  never.start(0.001);
  never.stop();
  EXPECT_FALSE(never.active());
  loop.run();
  EXPECT_EQ(once, 1);
  EXPECT_EQ(ticks, 3);
  EXPECT_GE(loop.time() - start, 0.007);  // 1 + 3 + 3 ms, never early
  EXPECT_TRUE(t2.active());
  loop.close();  // the pending tick is discarded: the timer goes quiet
  EXPECT_FALSE(t2.active());
}

}  // namespace
