// 10,000 concurrent connections to one loop's echo server, on each
// backend: a forked child opens them all (each sends its own message),
// reads every echo while all are still open, then closes them; the server
// must return every byte, have held all 10,000 at once, and leave no
// descriptor behind. On io_uring the server accepts with the ring's
// multishot accept (Acceptor), on epoll with accept4 on readiness.
//
// (In C++ rather than Python: a Python transport holds two descriptors per
// connection, and the client side needs a process of its own, so the
// Python form would need a hard RLIMIT_NOFILE above 20,000.)
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "shardloop/acceptor.hpp"
#include "shardloop/fd_watcher.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::Acceptor;
using shardloop::FdWatcher;
using shardloop::Stream;

constexpr int kConnections = 10000;

int open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n - 1;  // the directory's own descriptor
}

std::string message(int i) { return std::to_string(i) + ":" + std::string(static_cast<std::size_t>(i % 997), static_cast<char>('a' + i % 26)); }

// The child: all connections open, each message sent, every echo read
// while all are open, then all closed. Exit status: 0, or what failed.
[[noreturn]] void clients(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::vector<int> fds;
  fds.reserve(kConnections);
  for (int i = 0; i < kConnections; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) ::_exit(2);
    const std::string m = message(i);
    if (::send(fd, m.data(), m.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(m.size())) ::_exit(3);
    fds.push_back(fd);
  }
  for (int i = 0; i < kConnections; ++i) {
    const std::string m = message(i);
    std::string got(m.size(), '\0');
    std::size_t at = 0;
    while (at < got.size()) {
      ssize_t n = ::recv(fds[i], &got[at], got.size() - at, 0);
      if (n <= 0) ::_exit(4);
      at += static_cast<std::size_t>(n);
    }
    if (got != m) ::_exit(5);
  }
  for (int fd : fds) ::close(fd);
  ::_exit(0);
}

struct Server {
  shardloop::Loop* loop = nullptr;
  int listener = -1;
  int open = 0, peak = 0, accepted = 0;
  std::size_t bytes = 0;
  bool failed = false;
};

struct Conn {
  Server* server;
  Stream* stream = nullptr;
};

Stream::Callbacks echo_callbacks(Conn* c) {
  Stream::Callbacks cb;
  cb.ctx = c;
  cb.on_read = [](void* ctx, const char* data, ssize_t n) noexcept {
    auto* c = static_cast<Conn*>(ctx);
    if (n > 0) {
      c->server->bytes += static_cast<std::size_t>(n);
      if (c->stream->write(data, static_cast<std::size_t>(n)) != 0) c->server->failed = true;
      return;
    }
    if (n != UV_EOF) c->server->failed = true;
    c->stream->release();  // on_close frees the connection
  };
  cb.on_close = [](void* ctx) noexcept {
    auto* c = static_cast<Conn*>(ctx);
    --c->server->open;
    delete c;
  };
  return cb;
}

void serve(Server* s, int fd) noexcept {
  ++s->accepted;
  auto* c = new Conn{s};
  try {
    c->stream = Stream::open(*s->loop, fd, echo_callbacks(c));
  } catch (...) {
    delete c;
    s->failed = true;
    return;
  }
  s->peak = std::max(s->peak, ++s->open);
  if (c->stream->read_start() != 0) s->failed = true;
}

class ManyConnectionsTest : public ::testing::TestWithParam<bool>, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override { use_ring(GetParam()); }
};

TEST_P(ManyConnectionsTest, TenThousandEchoThenClose) {
  rlimit rl{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  const rlim_t needed = kConnections + 200;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < needed)
    GTEST_SKIP() << "needs " << needed << " descriptors; the hard RLIMIT_NOFILE is " << rl.rlim_max;
  const rlimit saved = rl;
  rl.rlim_cur = rl.rlim_max;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);  // the child inherits it

  iterations(1);  // the ring exists (it is made when the loop first runs)
  const int fds_before = open_fds();
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4096), 0);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  Server server;
  server.loop = &loop_;
  server.listener = listener;
  Acceptor* acceptor = nullptr;
  FdWatcher* watcher = nullptr;
  run_until(
      [&] {
        acceptor = Acceptor::open(loop_, listener,
                                  Acceptor::Callbacks{&server, [](void* ctx, int fd) noexcept { serve(static_cast<Server*>(ctx), fd); },
                                                      [](void* ctx, int) noexcept { static_cast<Server*>(ctx)->failed = true; }});
        if (acceptor == nullptr) {
          watcher = FdWatcher::open(
              loop_, listener,
              [](void* ctx, int) noexcept {
                auto* s = static_cast<Server*>(ctx);
                for (;;) {
                  int fd = ::accept4(s->listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                  if (fd < 0) return;
                  serve(s, fd);
                }
              },
              &server, false);
          watcher->watch(FdWatcher::kReadable);
        }
        return true;
      },
      "listen");
  const bool on_ring = acceptor != nullptr;
  EXPECT_EQ(on_ring, GetParam() && Acceptor::supported());

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) clients(ntohs(addr.sin_port));
  int status = -1;
  bool exited = false;
  {
    shardloop_test::Watchdog dog("10,000 connections", 60);
    run_until(
        [&] {
          if (!exited && ::waitpid(child, &status, WNOHANG) == child) exited = true;
          return exited && server.open == 0;
        },
        "all served and closed");
  }
  if (acceptor) acceptor->release();
  if (watcher) watcher->release();
  iterations(3);  // the accept's cancellation completes
  ::close(listener);
  iterations(3);
  ::setrlimit(RLIMIT_NOFILE, &saved);

  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the clients failed (2 connect, 3 send, 4 recv, 5 wrong echo)";
  EXPECT_FALSE(server.failed);
  EXPECT_EQ(server.accepted, kConnections);
  EXPECT_EQ(server.peak, kConnections);  // all open at once
  std::size_t expected = 0;
  for (int i = 0; i < kConnections; ++i) expected += message(i).size();
  EXPECT_EQ(server.bytes, expected);
  if (on_ring) EXPECT_EQ(loop_.io_stats().accept_cqes, static_cast<std::uint64_t>(kConnections));
  EXPECT_EQ(open_fds(), fds_before);
}

INSTANTIATE_TEST_SUITE_P(Backends, ManyConnectionsTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

}  // namespace
