// Datagram on both I/O backends (UDP stays on readiness on an io_uring
// loop too), against real UDP and AF_UNIX datagram sockets.
#include "shardloop/datagram.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "stream_support.hpp"

namespace {

using shardloop::Datagram;

// What a datagram socket reported, in order.
struct Received {
  std::vector<std::string> data;
  std::vector<std::string> addrs;  // the source address, as raw bytes
  std::vector<int> iteration;      // the loop iteration of each delivery
  std::vector<int> recv_errors;
  std::vector<int> write_statuses;
  std::vector<std::size_t> write_queued;
  int closes = 0;
  int* now = nullptr;                     // the harness's iteration counter
  std::function<void()> on_datagram;      // runs after each delivery

  static Datagram::Callbacks callbacks(Received* r) {
    return Datagram::Callbacks{
        r,
        [](void* ctx, const char* data, std::size_t len, const sockaddr* addr, socklen_t addrlen) noexcept {
          auto* self = static_cast<Received*>(ctx);
          self->data.emplace_back(data, len);
          self->addrs.emplace_back(reinterpret_cast<const char*>(addr), addr ? addrlen : 0);
          self->iteration.push_back(self->now ? *self->now : 0);
          if (self->on_datagram) self->on_datagram();
        },
        [](void* ctx, int err) noexcept { static_cast<Received*>(ctx)->recv_errors.push_back(err); },
        [](void* ctx, int status, std::size_t queued) noexcept {
          auto* self = static_cast<Received*>(ctx);
          self->write_statuses.push_back(status);
          self->write_queued.push_back(queued);
        },
        [](void* ctx) noexcept { ++static_cast<Received*>(ctx)->closes; },
    };
  }
};

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A UDP socket bound to 127.0.0.1 on a port of the kernel's choice.
int udp_socket(sockaddr_in* bound) {
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in a = loopback(0);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof *bound;
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(bound), &len), 0);
  return fd;
}

std::string as_bytes(const sockaddr_in& a) { return std::string(reinterpret_cast<const char*>(&a), sizeof a); }

std::string numbered(int i, std::size_t size) {
  std::string s = shardloop_test::pattern(size, static_cast<unsigned>(i));
  std::memcpy(&s[0], &i, sizeof i);
  return s;
}

class DatagramTest : public ::testing::TestWithParam<bool>, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override { use_ring(GetParam()); }

  Datagram* open(int fd, Received* r) {
    r->now = &iteration_;
    Datagram* d = nullptr;
    run_until(
        [&] {
          d = Datagram::open(loop_, fd, Received::callbacks(r));
          return true;
        },
        "open");
    return d;
  }
  // Runs iterations, counting them, until `done`.
  void run_counting(std::function<bool()> done, const char* what) {
    run_until(
        [&] {
          ++iteration_;
          return done();
        },
        what);
  }

  int iteration_ = 0;
};

// Datagrams waiting when reading starts arrive from one readiness event
// (one recvmmsg batch), each with its sender's address.
TEST_P(DatagramTest, BatchFromOneReadinessEvent) {
  sockaddr_in rx_addr, tx_addr;
  int rx = udp_socket(&rx_addr);
  int tx = udp_socket(&tx_addr);
  constexpr int kCount = 20;
  for (int i = 0; i < kCount; ++i) {
    const std::string d = numbered(i, 100 + i);
    ASSERT_EQ(::sendto(tx, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&rx_addr), sizeof rx_addr),
              static_cast<ssize_t>(d.size()));
  }
  Received r;
  Datagram* d = open(rx, &r);
  ASSERT_EQ(d->read_start(), 0);
  run_counting([&] { return r.data.size() >= kCount; }, "batch");
  ASSERT_EQ(r.data.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(r.data[i], numbered(i, 100 + i)) << i;
    EXPECT_EQ(r.addrs[i], as_bytes(tx_addr)) << i;
    EXPECT_EQ(r.iteration[i], r.iteration[0]) << "datagram " << i << " came from another readiness event";
  }
  EXPECT_TRUE(r.recv_errors.empty());
  d->release();
  iterations(2);
  EXPECT_EQ(r.closes, 1);
  ::close(tx);
}

// The largest UDP datagrams (65,507 bytes over IPv4), several in one
// batch, and an AF_UNIX datagram longer than any UDP one arrive whole.
TEST_P(DatagramTest, LargeDatagramsArriveWhole) {
  sockaddr_in rx_addr, tx_addr;
  int rx = udp_socket(&rx_addr);
  int tx = udp_socket(&tx_addr);
  int size = 1 << 20;
  ::setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  ::setsockopt(tx, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  constexpr std::size_t kMaxUdp = 65507;
  for (int i = 0; i < 3; ++i) {
    const std::string d = numbered(i, kMaxUdp);
    ASSERT_EQ(::sendto(tx, d.data(), d.size(), 0, reinterpret_cast<sockaddr*>(&rx_addr), sizeof rx_addr),
              static_cast<ssize_t>(d.size()));
  }
  Received r;
  Datagram* d = open(rx, &r);
  ASSERT_EQ(d->read_start(), 0);
  run_counting([&] { return r.data.size() >= 3; }, "64 KiB datagrams");
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(r.data[i] == numbered(i, kMaxUdp)) << i;
  d->release();
  ::close(tx);

  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds), 0);
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  ::setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  const std::string big = numbered(7, 200 * 1024);
  ASSERT_EQ(::send(fds[1], big.data(), big.size(), 0), static_cast<ssize_t>(big.size()));
  Received u;
  Datagram* ud = open(fds[0], &u);
  ASSERT_EQ(ud->read_start(), 0);
  run_counting([&] { return !u.data.empty(); }, "200 KiB AF_UNIX datagram");
  EXPECT_TRUE(u.data[0] == big);
  EXPECT_EQ(u.addrs[0], "");  // a socketpair's peer has no address
  ud->release();
  iterations(2);
  EXPECT_EQ(r.closes + u.closes, 2);
  ::close(fds[1]);
}

// A sender whose peer is slow: what the kernel refuses queues and leaves
// in order as the peer drains, reported through on_write.
TEST_P(DatagramTest, SendQueueUnderBackPressureKeepsOrder) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds), 0);
  int small = 4096;
  ::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  Received r;
  Datagram* d = open(fds[0], &r);
  const int peer = fds[1];
  constexpr int kCount = 2000;
  std::size_t most_queued = 0;
  for (int i = 0; i < kCount; ++i) {
    const std::string s = numbered(i, 1000);
    ASSERT_EQ(d->send(s.data(), s.size(), nullptr, 0), 0);
    most_queued = std::max(most_queued, d->queued());
  }
  EXPECT_GT(most_queued, 0u) << "the kernel took everything: nothing was queued";
  EXPECT_EQ(d->queued_bytes(), d->queued() * 1000);
  std::vector<std::string> got;
  char buf[2048];
  run_counting(
      [&] {
        // Drain a little each iteration, so the queue empties in steps.
        for (int i = 0; i < 5; ++i) {
          ssize_t n = ::recv(peer, buf, sizeof buf, MSG_DONTWAIT);
          if (n < 0) break;
          got.emplace_back(buf, static_cast<std::size_t>(n));
        }
        return got.size() >= kCount;
      },
      "drain");
  ASSERT_EQ(got.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i) ASSERT_TRUE(got[i] == numbered(i, 1000)) << "datagram " << i << " out of order";
  EXPECT_EQ(d->queued(), 0u);
  EXPECT_EQ(d->queued_bytes(), 0u);
  ASSERT_FALSE(r.write_statuses.empty());
  for (int s : r.write_statuses) EXPECT_EQ(s, 0);
  EXPECT_EQ(r.write_queued.back(), 0u);
  d->release();
  iterations(2);
  ::close(peer);
}

// A connected UDP socket whose peer's port is closed: each datagram's ICMP
// error comes back as a receive error, and the socket goes on working.
// A send the kernel refuses at once is returned to the caller.
TEST_P(DatagramTest, ErrorsReportedPerDatagram) {
  sockaddr_in closed_addr;
  int gone = udp_socket(&closed_addr);
  ::close(gone);  // nothing listens on that port now
  sockaddr_in mine;
  int fd = udp_socket(&mine);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&closed_addr), sizeof closed_addr), 0);
  Received r;
  Datagram* d = open(fd, &r);
  ASSERT_EQ(d->read_start(), 0);
  ASSERT_EQ(d->send("a", 1, nullptr, 0), 0);
  run_counting([&] { return !r.recv_errors.empty(); }, "first ECONNREFUSED");
  ASSERT_EQ(d->send("b", 1, nullptr, 0), 0);
  run_counting([&] { return r.recv_errors.size() >= 2; }, "second ECONNREFUSED");
  EXPECT_EQ(r.recv_errors, (std::vector<int>{-ECONNREFUSED, -ECONNREFUSED}));
  EXPECT_TRUE(r.data.empty());

  // An IPv6 destination on an IPv4 socket: refused now, nothing queued.
  sockaddr_in6 v6{};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = htons(9);
  v6.sin6_addr = in6addr_loopback;
  const int rc = d->send("c", 1, reinterpret_cast<sockaddr*>(&v6), sizeof v6);
  EXPECT_LT(rc, 0);
  EXPECT_EQ(d->queued(), 0u);
  d->release();
  iterations(2);
  EXPECT_EQ(r.closes, 1);
}

// Closing with datagrams queued drops them: no on_write follows, the
// peer gets only what the kernel took before, and the memory goes (ASan).
TEST_P(DatagramTest, CloseWhileDatagramsQueued) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds), 0);
  Received r;
  Datagram* d = open(fds[0], &r);
  int sent_now = -1;
  for (int i = 0; i < 500; ++i) {
    const std::string s = numbered(i, 512);
    ASSERT_EQ(d->send(s.data(), s.size(), nullptr, 0), 0);
    if (d->queued() != 0 && sent_now < 0) sent_now = i;
  }
  ASSERT_GT(sent_now, 0);
  EXPECT_EQ(d->queued(), static_cast<std::size_t>(500 - sent_now));
  d->release();
  EXPECT_EQ(r.closes, 1);
  iterations(3);
  EXPECT_TRUE(r.write_statuses.empty());
  int got = 0;
  char buf[1024];
  while (::recv(fds[1], buf, sizeof buf, MSG_DONTWAIT) > 0) ++got;
  EXPECT_EQ(got, sent_now);
  ::close(fds[1]);
}

// Pausing in the middle of a batch holds the rest: nothing is delivered
// while paused, and after resuming everything arrives, in order. Closing
// from inside a delivery stops the batch.
TEST_P(DatagramTest, PauseAndCloseInsideABatch) {
  sockaddr_in rx_addr, tx_addr;
  int rx = udp_socket(&rx_addr);
  int tx = udp_socket(&tx_addr);
  for (int i = 0; i < 10; ++i) {
    const std::string s = numbered(i, 64);
    ASSERT_EQ(::sendto(tx, s.data(), s.size(), 0, reinterpret_cast<sockaddr*>(&rx_addr), sizeof rx_addr), 64);
  }
  Received r;
  Datagram* d = open(rx, &r);
  r.on_datagram = [&] {
    if (r.data.size() == 3) d->read_stop();
  };
  ASSERT_EQ(d->read_start(), 0);
  run_counting([&] { return r.data.size() >= 3; }, "first three");
  iterations(5);
  EXPECT_EQ(r.data.size(), 3u);
  r.on_datagram = [&] {
    if (r.data.size() == 8) d->close();
  };
  ASSERT_EQ(d->read_start(), 0);
  EXPECT_EQ(r.data.size(), 3u);  // never from inside read_start()
  run_counting([&] { return r.closes == 1; }, "the rest");
  iterations(3);
  ASSERT_EQ(r.data.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(r.data[i], numbered(i, 64)) << i;
  d->release();
  iterations(2);
  ::close(tx);
}

INSTANTIATE_TEST_SUITE_P(Backends, DatagramTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

}  // namespace
