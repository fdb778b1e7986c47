// Connection, the native server's poll-driven socket: queued writes under
// back-pressure arrive whole and in order, shutdown sends the queue first,
// half-close, a peer's reset, and closing from inside a handler.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "shardloop/runtime.hpp"
#include "shardloop/tcp_server.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Connection;
using shardloop::Runtime;
using shardloop::TcpHandlers;
using shardloop::TcpServer;
using shardloop_test::connect_to;
using shardloop_test::read_exactly;
using shardloop_test::Watchdog;

// Every test runs on both I/O backends (GetParam(): io_uring).
class ConnectionTest : public ::testing::TestWithParam<bool> {
 protected:
  Runtime::Options one_shard() const {
    Runtime::Options o = shardloop_test::unpinned(1);
    o.io_uring = GetParam();
    return o;
  }
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 7 + i / 251) & 0xff);
  return s;
}

std::string read_to_eof(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

// 16 MiB written at once to a peer that is not reading: most of it is
// queued, written in order as the peer reads, and shutdown() waits for it.
TEST_P(ConnectionTest, QueuedWritesAndShutdownUnderBackPressure) {
  Watchdog dog("connection back-pressure", 60);
  const std::string data = pattern(16 << 20);
  Runtime rt(one_shard());
  std::size_t queued_after_write = 0;
  int write_after_shutdown = 0, close_error = -1;
  TcpHandlers h;
  h.on_connection = [&](Connection& c) {
    // In pieces of different sizes, the later ones onto a non-empty queue.
    std::size_t at = 0;
    for (std::size_t piece = 1; at < data.size(); piece = piece * 3 + 1) {
      std::size_t n = std::min(piece, data.size() - at);
      ASSERT_EQ(c.write(data.data() + at, n), 0);
      at += n;
    }
    queued_after_write = c.queued();
    ASSERT_EQ(c.shutdown(), 0);
    write_after_shutdown = c.write("x");
  };
  h.on_close = [&](Connection& c) {
    close_error = c.error();
    rt.stop();
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  std::string got;
  std::thread client([&] {
    int fd = connect_to(server->port());
    ASSERT_GE(fd, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the queue build up
    got = read_to_eof(fd);
    ::close(fd);  // the server's read side then sees EOF and closes
  });
  rt.run();
  client.join();
  EXPECT_GT(queued_after_write, 0u);
  EXPECT_EQ(write_after_shutdown, UV_EPIPE);
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(close_error, 0);
}

// With on_eof the connection stays open for writing after the peer's FIN.
TEST_P(ConnectionTest, HalfCloseLeavesTheWriteSideOpen) {
  Watchdog dog("connection half-close", 30);
  Runtime rt(one_shard());
  std::atomic<int> eofs{0}, closes{0};
  TcpHandlers h;
  h.on_data = [](Connection& c, const char* data, std::size_t len) { c.write(data, len); };
  h.on_eof = [&](Connection& c) {
    ++eofs;
    EXPECT_EQ(c.write("bye"), 0);
    EXPECT_EQ(c.shutdown(), 0);
  };
  h.on_close = [&](Connection& c) {
    EXPECT_EQ(c.error(), 0);
    ++closes;
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  std::string got;
  std::thread client([&] {
    int fd = connect_to(server->port());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "hello", 5), 5);
    std::string echo;
    ASSERT_TRUE(read_exactly(fd, echo, 5));  // echoed before the FIN is sent
    ::shutdown(fd, SHUT_WR);
    got = echo + read_to_eof(fd);
    ::close(fd);
  });
  // Nothing closes the connection by itself after the half-close: the
  // runtime's shutdown does, once the client has its bytes.
  std::thread stopper([&] {
    client.join();
    rt.stop();
  });
  rt.run();
  stopper.join();
  EXPECT_EQ(got, "hellobye");
  EXPECT_EQ(eofs.load(), 1);
  EXPECT_EQ(closes.load(), 1);
}

// A reset from the peer ends the connection with UV_ECONNRESET.
TEST_P(ConnectionTest, PeerResetIsAnError) {
  Watchdog dog("connection reset", 30);
  Runtime rt(one_shard());
  int error = 0;
  TcpHandlers h;
  h.on_close = [&](Connection& c) {
    error = c.error();
    rt.stop();
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  std::thread client([&] {
    int fd = connect_to(server->port());
    ASSERT_GE(fd, 0);
    linger lg{1, 0};  // close() sends RST
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(fd);
  });
  rt.run();
  client.join();
  EXPECT_EQ(error, UV_ECONNRESET);
}

// close() from inside on_data: on_close runs once, before close() returns,
// later writes are refused, and nothing more is read.
TEST_P(ConnectionTest, CloseFromInsideOnData) {
  Watchdog dog("connection close in handler", 30);
  Runtime rt(one_shard());
  int data_calls = 0, closes = 0, write_after = 0;
  bool closed_inside = false;
  TcpHandlers h;
  h.on_data = [&](Connection& c, const char*, std::size_t) {
    ++data_calls;
    c.close();
    closed_inside = closes == 1 && c.closed();
    write_after = c.write("late");
  };
  h.on_close = [&](Connection&) {
    ++closes;
    rt.stop();
  };
  auto server = TcpServer::listen(rt, TcpServer::Options{}, h);
  std::string rest = "?";
  std::thread client([&] {
    int fd = connect_to(server->port());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "one", 3), 3);
    rest = read_to_eof(fd);
    ::close(fd);
  });
  rt.run();
  client.join();
  EXPECT_EQ(data_calls, 1);
  EXPECT_EQ(closes, 1);
  EXPECT_TRUE(closed_inside);
  EXPECT_EQ(write_after, UV_EBADF);
  EXPECT_EQ(rest, "");
}

INSTANTIATE_TEST_SUITE_P(Backends, ConnectionTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

}  // namespace
