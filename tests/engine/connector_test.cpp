// Connector: a connect as an IORING_OP_CONNECT on the loop's ring, against
// real sockets: connected (IPv4, IPv6), refused, cancelled while the
// kernel still tries (a listener whose accept queue is full drops the SYN,
// so the connect stays in SYN_SENT), the socket's fd closed while the
// connect is in flight (the kernel's hold on the socket lasts until the
// cancellation), a release() from inside on_done, and the loop closed with
// a connect in flight. On an epoll loop start() declines (nullptr).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/connector.hpp"
#include "shardloop/loop.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::Connector;
using shardloop::Loop;

// What one connect reported.
struct Outcome {
  int calls = 0;
  int status = 1;
  Connector* self = nullptr;
  bool release_in_callback = false;

  Connector::Callbacks callbacks() {
    return Connector::Callbacks{this, [](void* ctx, int status) noexcept {
                                  auto* o = static_cast<Outcome*>(ctx);
                                  ++o->calls;
                                  o->status = status;
                                  if (o->release_in_callback) {
                                    o->self->release();
                                    o->self = nullptr;
                                  }
                                }};
  }
};

int tcp_socket(int family = AF_INET) { return ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }

// A listener on the loopback address of `family`; its address in `addr`.
int listener(sockaddr_storage& addr, socklen_t& len, int backlog, int family = AF_INET) {
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  addr = {};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, backlog) != 0) {
    ::close(fd);
    return -1;
  }
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  return fd;
}

std::uint16_t port_of(const sockaddr_storage& addr) {
  return ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<const sockaddr_in6&>(addr).sin6_port
                                          : reinterpret_cast<const sockaddr_in&>(addr).sin_port);
}

// Sockets of this network namespace in SYN_SENT towards `port` on
// 127.0.0.1 (/proc/net/tcp: state 02): a connect the kernel still makes.
int syn_sent_to(std::uint16_t port) {
  std::ifstream f("/proc/net/tcp");
  std::string line;
  std::getline(f, line);  // header
  int n = 0;
  char want[16];
  std::snprintf(want, sizeof want, ":%04X", port);
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string sl, local, remote, state;
    in >> sl >> local >> remote >> state;
    if (state == "02" && remote.size() > 5 && remote.compare(remote.size() - 5, 5, want) == 0) ++n;
  }
  return n;
}

// A listener whose accept queue is full: the kernel drops further SYNs,
// so a connect to it stays in progress (SYN_SENT, retrying).
struct FullListener {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int fd = -1;
  int queued = -1;
  FullListener() {
    fd = listener(addr, len, 0);
    // backlog 0 holds one connection; it completes and stays unaccepted.
    queued = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(queued, reinterpret_cast<sockaddr*>(&addr), len) != 0) ADD_FAILURE() << std::strerror(errno);
  }
  ~FullListener() {
    ::close(queued);
    ::close(fd);
  }
};

// What a connect to a full listener (one that stays in progress) needs.
struct InProgress {
  FullListener full;
  std::uint16_t port = port_of(full.addr);
  int fd = tcp_socket();
  Outcome out;
  Connector* c = nullptr;
};

class ConnectorTest : public ::testing::Test, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override {
    use_ring(true);
    iterations(1);  // the ring exists from the loop's first run
  }
  // Starts a connect of `fd` to `addr` from inside the loop.
  Connector* start(int fd, const sockaddr_storage& addr, socklen_t len, Outcome& out) {
    Connector* c = nullptr;
    run_until(
        [&] {
          c = Connector::start(loop_, fd, reinterpret_cast<const sockaddr*>(&addr), len, out.callbacks());
          return true;
        },
        "start");
    out.self = c;
    return c;
  }
  // Starts `p`'s connect, which stays in progress, and lets the loop
  // submit it.
  void begin(InProgress& p) {
    p.c = start(p.fd, p.full.addr, p.full.len, p.out);
    ASSERT_NE(p.c, nullptr);
    iterations(2);
  }
  void wait_done(Outcome& out) {
    run_until([&] { return out.calls != 0; }, "connect done");
  }
};

TEST_F(ConnectorTest, ConnectsIPv4AndIPv6) {
  for (int family : {AF_INET, AF_INET6}) {
    sockaddr_storage addr;
    socklen_t len;
    int lfd = listener(addr, len, 16, family);
    if (lfd < 0 && family == AF_INET6) {
      std::printf("no IPv6 loopback here: IPv4 only\n");
      continue;
    }
    ASSERT_GE(lfd, 0);
    const std::uint64_t before = loop_.io_stats().connect_sqes;
    int fd = tcp_socket(family);
    Outcome out;
    Connector* c = start(fd, addr, len, out);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(loop_.io_stats().connect_sqes, before + 1);
    wait_done(out);
    EXPECT_EQ(out.calls, 1);
    EXPECT_EQ(out.status, 0);
    EXPECT_TRUE(c->done());
    c->release();
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    EXPECT_EQ(::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen), 0);
    EXPECT_EQ(port_of(peer), port_of(addr));
    int conn = ::accept(lfd, nullptr, nullptr);
    EXPECT_GE(conn, 0);
    EXPECT_EQ(::send(fd, "ping", 4, MSG_NOSIGNAL), 4);
    char buf[4];
    EXPECT_EQ(::recv(conn, buf, 4, MSG_WAITALL), 4);
    ::close(conn);
    ::close(fd);
    ::close(lfd);
  }
}

// The address is the Connector's own copy: the caller's may change or go
// at once, before the SQE is even submitted.
TEST_F(ConnectorTest, AddressIsCopied) {
  sockaddr_storage addr;
  socklen_t len;
  int lfd = listener(addr, len, 16);
  ASSERT_GE(lfd, 0);
  int fd = tcp_socket();
  Outcome out;
  Connector* c = nullptr;
  run_until(
      [&] {
        sockaddr_storage scratch = addr;
        c = Connector::start(loop_, fd, reinterpret_cast<const sockaddr*>(&scratch), len, out.callbacks());
        std::memset(&scratch, 0xff, sizeof scratch);
        return true;
      },
      "start");
  ASSERT_NE(c, nullptr);
  wait_done(out);
  EXPECT_EQ(out.status, 0);
  c->release();
  ::close(fd);
  ::close(lfd);
}

TEST_F(ConnectorTest, RefusedReportsECONNREFUSED) {
  sockaddr_storage addr;
  socklen_t len;
  int lfd = listener(addr, len, 1);
  ASSERT_GE(lfd, 0);
  ::close(lfd);  // the port is free now: nothing listens there
  int fd = tcp_socket();
  Outcome out;
  Connector* c = start(fd, addr, len, out);
  ASSERT_NE(c, nullptr);
  wait_done(out);
  EXPECT_EQ(out.status, -ECONNREFUSED);
  c->release();
  ::close(fd);
}

TEST_F(ConnectorTest, ReleaseFromInsideOnDone) {
  sockaddr_storage addr;
  socklen_t len;
  int lfd = listener(addr, len, 16);
  ASSERT_GE(lfd, 0);
  int fd = tcp_socket();
  Outcome out;
  out.release_in_callback = true;
  ASSERT_NE(start(fd, addr, len, out), nullptr);
  wait_done(out);
  EXPECT_EQ(out.status, 0);
  EXPECT_EQ(out.self, nullptr);
  iterations(2);
  ::close(fd);
  ::close(lfd);
}

// Cancelled while the kernel still tries: on_done never runs, and once
// the owner closes the socket it is gone (the ring no longer holds it).
TEST_F(ConnectorTest, ReleaseCancelsAConnectInProgress) {
  InProgress p;
  ASSERT_NO_FATAL_FAILURE(begin(p));
  auto& [full, port, fd, out, c] = p;
  iterations(1);
  EXPECT_EQ(out.calls, 0);
  EXPECT_EQ(syn_sent_to(port), 1);
  c->release();
  iterations(2);  // the cancellation's completions
  EXPECT_EQ(out.calls, 0);
  ::close(fd);
  EXPECT_EQ(syn_sent_to(port), 0);
}

// The fd closed while the connect is in flight: the kernel's reference
// keeps the socket connecting (as a close on epoll would not) until the
// Connector is released, which cancels it; then the socket is gone.
TEST_F(ConnectorTest, FdClosedWhileConnectingLastsUntilRelease) {
  InProgress p;
  ASSERT_NO_FATAL_FAILURE(begin(p));
  auto& [full, port, fd, out, c] = p;
  ::close(fd);
  iterations(2);
  EXPECT_EQ(syn_sent_to(port), 1);  // the ring still holds it
  EXPECT_EQ(out.calls, 0);
  c->release();
  iterations(2);
  EXPECT_EQ(out.calls, 0);
  EXPECT_EQ(syn_sent_to(port), 0);
}

// Loop::close() with a connect in flight: the Connector is closed (its
// connect cancelled; the owner hears nothing), the ring drains, and the
// owner's release() afterwards frees it.
TEST_F(ConnectorTest, LoopCloseWithConnectInFlight) {
  InProgress p;
  ASSERT_NO_FATAL_FAILURE(begin(p));
  auto& [full, port, fd, out, c] = p;
  loop_.close();
  EXPECT_EQ(out.calls, 0);
  c->release();
  ::close(fd);
  EXPECT_EQ(syn_sent_to(port), 0);
}

// Many at once, some to a listener and some refused: each hears its own.
TEST_F(ConnectorTest, ManyAtOnceEachHearsItsOwn) {
  constexpr int kEach = 100;
  sockaddr_storage open_addr, closed_addr;
  socklen_t len;
  int lfd = listener(open_addr, len, 2 * kEach);
  ASSERT_GE(lfd, 0);
  int gone = listener(closed_addr, len, 1);
  ASSERT_GE(gone, 0);
  ::close(gone);
  std::vector<Outcome> outs(2 * kEach);
  std::vector<int> fds(2 * kEach);
  std::vector<Connector*> cs(2 * kEach);
  run_until(
      [&] {
        for (int i = 0; i < 2 * kEach; ++i) {
          fds[i] = tcp_socket();
          const sockaddr_storage& a = i % 2 ? closed_addr : open_addr;
          cs[i] = Connector::start(loop_, fds[i], reinterpret_cast<const sockaddr*>(&a), len, outs[i].callbacks());
        }
        return true;
      },
      "start many");
  run_until(
      [&] {
        for (const Outcome& o : outs)
          if (o.calls == 0) return false;
        return true;
      },
      "all done");
  for (int i = 0; i < 2 * kEach; ++i) {
    EXPECT_EQ(outs[i].calls, 1);
    EXPECT_EQ(outs[i].status, i % 2 ? -ECONNREFUSED : 0) << i;
    cs[i]->release();
    ::close(fds[i]);
  }
  ::close(lfd);
}

TEST(ConnectorEpoll, DeclinesOnAnEpollLoop) {
  Loop loop;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  Connector* c = reinterpret_cast<Connector*>(1);
  loop.call_soon(shardloop::Work{[](void* ctx, bool run) noexcept {
                                   if (!run) return;
                                   auto** out = static_cast<Connector**>(ctx);
                                   sockaddr_in a{};
                                   a.sin_family = AF_INET;
                                   *out = Connector::start(*Loop::current(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a, {});
                                   Loop::current()->stop();
                                 },
                                 &c});
  loop.run();
  EXPECT_EQ(c, nullptr);
  EXPECT_EQ(loop.io_stats().connect_sqes, 0u);
}

}  // namespace
