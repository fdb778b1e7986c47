// What is the epoll backend's own (backend_epoll.cpp): data and the peer's
// hangup found by one poll, the write queue under a full socket, shutdown
// after a queued write, a reset peer through libuv's poll-error path,
// pipes (epoll even on an io_uring loop), and a 64 MiB transfer each way.
// What both backends share is in stream_test.cpp.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::Stream;
using shardloop_test::Events;
using shardloop_test::pattern;

class EpollTest : public ::testing::Test, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override { use_ring(false); }
};

// The peer sends and closes before the loop polls: epoll reports
// readable and hangup together (UV_DISCONNECT), so the short read is
// followed by the EOF in the same callback, not one poll later.
TEST_F(EpollTest, DataAndHangupFromOnePollArriveTogether) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  ASSERT_EQ(::write(peer, "bye", 3), 3);
  ::close(peer);
  int iteration = 0, data_at = -1, eof_at = -1;
  ev.on_data = [&] { data_at = iteration; };
  ev.on_status = [&] { eof_at = iteration; };
  ASSERT_EQ(s->read_start(), 0);
  run_until(
      [&] {
        ++iteration;
        return eof_at >= 0;
      },
      "data then eof");
  EXPECT_EQ(ev.order, "ds");
  EXPECT_EQ(ev.data, "bye");
  EXPECT_EQ(ev.statuses, std::vector<int>{UV_EOF});
  EXPECT_EQ(data_at, eof_at) << "the EOF waited for another poll";
  EXPECT_FALSE(s->reading());
  s->release();
  iterations(2);
}

// Without a hangup a short read ends the wake-up: no EOF is invented.
TEST_F(EpollTest, ShortReadWithoutHangupIsNoEof) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  ASSERT_EQ(s->read_start(), 0);
  ASSERT_EQ(::write(peer, "part", 4), 4);
  run_until([&] { return ev.data.size() == 4; }, "data");
  iterations(5);
  EXPECT_TRUE(ev.statuses.empty());
  EXPECT_TRUE(s->reading());
  s->release();
  iterations(2);
  ::close(peer);
}

// A write the full socket refuses in part: queued() is exactly what the
// kernel did not take, the rest goes out when the socket turns writable,
// each on_write says what is left, and the bytes arrive as written.
TEST_F(EpollTest, FullSocketQueuesTheRestAndResumesWhenWritable) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  const std::string data = pattern(4 << 20, 3);
  ASSERT_EQ(s->write(data.data(), data.size()), 0);
  const std::size_t queued = s->queued();
  ASSERT_GT(queued, 0u);
  ASSERT_LT(queued, data.size());
  // What the peer can read now is exactly what the kernel took.
  std::string got;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(peer, buf, sizeof buf, MSG_DONTWAIT)) > 0) got.append(buf, static_cast<std::size_t>(n));
  EXPECT_EQ(got.size(), data.size() - queued);
  std::thread reader([&] { shardloop_test::read_exactly(peer, got, data.size()); });
  run_until([&] { return s->queued() == 0; }, "queue drained");
  reader.join();
  EXPECT_TRUE(got == data);
  ASSERT_FALSE(ev.write_queued.empty());
  for (std::size_t i = 0; i < ev.writes.size(); ++i) {
    EXPECT_EQ(ev.writes[i], 0);
    if (i > 0) EXPECT_LT(ev.write_queued[i], ev.write_queued[i - 1]);
  }
  EXPECT_EQ(ev.write_queued.back(), 0u);
  s->release();
  iterations(2);
  ::close(peer);
}

// shutdown() with bytes queued: the queue is sent first, its progress is
// reported, then the write side shuts down; never from inside shutdown().
TEST_F(EpollTest, ShutdownAfterAQueuedWriteWaitsForIt) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  const std::string data = pattern(2 << 20, 4);
  ASSERT_EQ(s->write(data.data(), data.size()), 0);
  ASSERT_GT(s->queued(), 0u);
  ASSERT_EQ(s->shutdown(), 0);
  EXPECT_TRUE(ev.shutdowns.empty());
  EXPECT_EQ(s->write("x", 1), UV_EPIPE);
  std::string got;
  std::thread reader([&] {
    char buf[65536];
    ssize_t n;
    while ((n = ::read(peer, buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  });
  run_until([&] { return !ev.shutdowns.empty(); }, "drained, then shut down");
  reader.join();  // returns at the EOF the shutdown sent
  EXPECT_TRUE(got == data);
  EXPECT_EQ(ev.shutdowns, std::vector<int>{0});
  ASSERT_FALSE(ev.order.empty());
  EXPECT_EQ(ev.order.back(), 'h');
  EXPECT_EQ(ev.order.find('h'), ev.order.size() - 1);
  EXPECT_EQ(ev.write_queued.back(), 0u);
  s->release();
  iterations(2);
  ::close(peer);
}

// shutdown() with nothing queued still reports from the loop, not inside
// the call.
TEST_F(EpollTest, ShutdownWithNothingQueuedReportsFromTheLoop) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  ASSERT_EQ(s->shutdown(), 0);
  EXPECT_TRUE(ev.shutdowns.empty());
  run_until([&] { return !ev.shutdowns.empty(); }, "shutdown");
  EXPECT_EQ(ev.shutdowns, std::vector<int>{0});
  char c;
  EXPECT_EQ(::read(peer, &c, 1), 0);
  s->release();
  iterations(2);
  ::close(peer);
}

// A TCP peer's reset while reading: libuv reports the poll error (and
// stops the handle); the owner hears the socket's own error, ECONNRESET,
// and reading ends.
TEST_F(EpollTest, ResetPeerIsReportedAsConnectionReset) {
  int listener = shardloop_test::listen_on_loopback();
  ASSERT_GE(listener, 0);
  int client = shardloop_test::connect_to(shardloop_test::port_of(listener));
  ASSERT_GE(client, 0);
  int server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  Events ev;
  Stream* s = open(server, &ev);
  ASSERT_EQ(s->read_start(), 0);
  iterations(2);
  linger lg{1, 0};
  ::setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(client);
  run_until([&] { return !ev.statuses.empty(); }, "reset reported");
  EXPECT_EQ(ev.statuses, std::vector<int>{UV_ECONNRESET});
  EXPECT_FALSE(s->reading());
  EXPECT_LT(s->write("x", 1), 0);
  EXPECT_EQ(ev.closes, 0);  // the owner closes it, not the backend
  s->release();
  iterations(2);
  EXPECT_EQ(ev.closes, 1);
  ::close(listener);
}

// A queued write to a peer that resets: the failure is reported once (the
// stream stops watching for writability), later writes are refused, and
// the stream stays open for its owner to close.
TEST_F(EpollTest, QueuedWriteToAResetPeerFailsOnce) {
  int listener = shardloop_test::listen_on_loopback();
  ASSERT_GE(listener, 0);
  int client = shardloop_test::connect_to(shardloop_test::port_of(listener));
  ASSERT_GE(client, 0);
  int server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  Events ev;
  Stream* s = open(server, &ev);
  const std::string big(8 << 20, 'x');
  ASSERT_EQ(s->write(big.data(), big.size()), 0);
  ASSERT_GT(s->queued(), 0u);
  linger lg{1, 0};
  ::setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(client);
  run_until([&] { return !ev.writes.empty(); }, "write failure");
  iterations(5);
  ASSERT_EQ(ev.writes.size(), 1u);
  EXPECT_TRUE(ev.writes[0] == UV_ECONNRESET || ev.writes[0] == UV_EPIPE) << ev.writes[0];
  EXPECT_EQ(s->write("y", 1), UV_EPIPE);
  EXPECT_EQ(ev.closes, 0);
  s->release();
  iterations(2);
  EXPECT_EQ(ev.closes, 1);
  ::close(listener);
}

// Pipes are never on the ring (multishot recv and send need a socket):
// on an io_uring loop too they read and write through epoll, byte-exact.
TEST(EpollPipe, PipesUseEpollEvenOnAnIoUringLoop) {
  struct Harness : shardloop_test::StreamHarness {
  } h;
  h.use_ring(true);
  int in[2], out[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  Events rev, wev;
  Stream* r = h.open(in[0], &rev, Stream::Kind::kPipe);
  Stream* w = h.open(out[1], &wev, Stream::Kind::kPipe);
  const std::string data = pattern(1 << 20, 5);
  ASSERT_EQ(r->read_start(), 0);
  ASSERT_EQ(w->write(data.data(), data.size()), 0);
  EXPECT_GT(w->queued(), 0u);  // a pipe holds 64 KiB
  std::thread relay([&] {
    // What the write end sends comes back through the read end.
    char buf[65536];
    ssize_t n;
    while ((n = ::read(out[0], buf, sizeof buf)) > 0) {
      for (ssize_t at = 0; at < n;) {
        ssize_t k = ::write(in[1], buf + at, static_cast<std::size_t>(n - at));
        if (k <= 0) return;
        at += k;
      }
    }
    ::close(in[1]);
  });
  // A pipe has no half-close: once its queue is out, the write end is
  // closed, which the relay passes on as EOF.
  bool w_closed = false;
  h.run_until(
      [&] {
        if (!w_closed && w->queued() == 0) {
          w->release();
          w_closed = true;
        }
        return !rev.statuses.empty();
      },
      "through both pipes");
  relay.join();
  EXPECT_EQ(rev.statuses, std::vector<int>{UV_EOF});
  EXPECT_TRUE(rev.data == data);
  for (int st : wev.writes) EXPECT_EQ(st, 0);
  r->release();
  h.iterations(2);
  ::close(out[0]);
}

TEST_F(EpollTest, Transfers64MiBEachWayByteExact) { shardloop_test::transfer_both_ways(*this); }

}  // namespace
