// TcpServer on a Runtime: real sockets, connections spread by SO_REUSEPORT
// over the shards, every byte echoed by the shard that accepted it; and
// the native Timer.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
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
  TcpHandlers h;
  h.on_connection = [&](Connection& c) {
    if (static_cast<int>(c.shard()) != Runtime::this_shard()) ++wrong_shard;
    // The ring exists on exactly the io_uring runs (this kernel has one).
    if ((c.loop().ring() != nullptr) != GetParam()) ++wrong_backend;
    opened[c.shard()].fetch_add(1);
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
  std::printf("connections per shard: %llu %llu\n", static_cast<unsigned long long>(per[0]),
              static_cast<unsigned long long>(per[1]));
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
