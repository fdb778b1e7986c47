// Stream on both I/O backends, what they share: reads, pause/resume, the
// write queue's order under back-pressure, a peer's reset, closing with
// operations in flight, many streams at once (on io_uring more than the
// ring has provided buffers). Each backend's own behaviour is tested in
// backend_epoll_test.cpp and backend_uring_test.cpp, the choice of one in
// io_backend_test.cpp.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "../../engine/src/ring.hpp"
#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::Stream;
using shardloop_test::Events;

class StreamTest : public ::testing::TestWithParam<bool>, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override { use_ring(GetParam()); }
};

TEST_P(StreamTest, ReadsThenEof) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  ASSERT_EQ(s->read_start(), 0);
  ASSERT_EQ(::write(peer, "hello", 5), 5);
  ::shutdown(peer, SHUT_WR);
  run_until([&] { return !ev.statuses.empty(); }, "eof");
  EXPECT_EQ(ev.data, "hello");
  EXPECT_EQ(ev.statuses, std::vector<int>{UV_EOF});
  s->release();
  iterations(3);
  EXPECT_EQ(ev.closes, 1);
  ::close(peer);
}

// What is waiting when reading starts arrives in one delivery, as a read
// into the loop's 256 KiB buffer gives it on epoll: on io_uring the ring
// gathers the consecutive 16 KiB completions of one stream.
TEST_P(StreamTest, WaitingBytesArriveTogether) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  int size = 512 * 1024;
  ::setsockopt(peer, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  const std::string data(128 * 1024, 'q');
  ASSERT_EQ(::send(peer, data.data(), data.size(), MSG_DONTWAIT), static_cast<ssize_t>(data.size()));
  int deliveries = 0;
  ev.on_data = [&] { ++deliveries; };
  ASSERT_EQ(s->read_start(), 0);
  run_until([&] { return ev.data.size() == data.size(); }, "gathered read");
  EXPECT_EQ(ev.data, data);
  EXPECT_LE(deliveries, 2);
  s->release();
  iterations(2);
  ::close(peer);
}

// Nothing is delivered after read_stop() returns, and nothing is lost or
// reordered by read_start(): on io_uring the multishot recv is cancelled,
// and what the kernel delivered meanwhile is held.
TEST_P(StreamTest, PauseDeliversNothingAndResumeLosesNothing) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  std::string sent;
  ASSERT_EQ(s->read_start(), 0);
  for (int round = 0; round < 20; ++round) {
    const std::string chunk = "chunk" + std::to_string(round) + ";";
    ASSERT_EQ(::write(peer, chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
    sent += chunk;
    // Pause from inside the delivery, with the next bytes already sent.
    ev.on_data = [&] {
      s->read_stop();
      ASSERT_EQ(::write(peer, "+", 1), 1);
      sent += "+";
      ev.on_data = nullptr;
    };
    run_until([&] { return !ev.on_data; }, "first delivery");
    const std::size_t at_pause = ev.data.size();
    iterations(5);
    EXPECT_EQ(ev.data.size(), at_pause) << "delivered while paused";
    ASSERT_EQ(s->read_start(), 0);
    run_until([&] { return ev.data.size() == sent.size(); }, "resume");
  }
  EXPECT_EQ(ev.data, sent);
  s->release();
  iterations(2);
  ::close(peer);
}

// 16 MiB written in uneven pieces to a peer that reads slowly: short sends
// continue, later writes wait their turn, and shutdown follows the data.
TEST_P(StreamTest, WritesKeepOrderUnderBackPressure) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  std::string data(16 << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 31 + i / 4093) & 0xff);
  std::size_t at = 0;
  for (std::size_t piece = 1; at < data.size(); piece = piece * 5 + 3) {
    const std::size_t n = std::min(piece, data.size() - at);
    ASSERT_EQ(s->write(data.data() + at, n), 0);
    at += n;
  }
  EXPECT_GT(s->queued(), 0u);
  ASSERT_EQ(s->shutdown(), 0);
  EXPECT_EQ(s->write("late", 4), UV_EPIPE);
  std::string got;
  std::thread reader([&] {
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(peer, buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
  });
  run_until([&] { return !ev.shutdowns.empty(); }, "drain + shutdown");
  reader.join();
  EXPECT_EQ(ev.shutdowns, std::vector<int>{0});
  EXPECT_TRUE(got == data) << "got " << got.size() << " bytes";
  for (int w : ev.writes) EXPECT_EQ(w, 0);
  s->release();
  iterations(2);
  ::close(peer);
}

// The peer resets while a large send is queued: the writer hears an error,
// nothing crashes, and the stream closes cleanly.
TEST_P(StreamTest, PeerResetDuringSend) {
  Events ev;
  Stream* s;
  int fds[2];
  // TCP, for a real RST.
  int listener = shardloop_test::listen_on_loopback();
  ASSERT_GE(listener, 0);
  int client = shardloop_test::connect_to(shardloop_test::port_of(listener));
  int server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  fds[0] = server;
  fds[1] = client;
  run_until(
      [&] {
        s = Stream::open(loop_, fds[0], Events::callbacks(&ev));
        return true;
      },
      "open");
  ASSERT_EQ(s->read_start(), 0);
  std::string big(8 << 20, 'x');
  ASSERT_EQ(s->write(big.data(), big.size()), 0);
  iterations(2);
  linger lg{1, 0};
  ::setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  ::close(client);
  run_until([&] { return !ev.writes.empty() || !ev.statuses.empty(); }, "reset reported");
  bool error_seen = false;
  for (int w : ev.writes) error_seen |= w < 0;
  for (int st : ev.statuses) error_seen |= st < 0 && st != UV_EOF;
  EXPECT_TRUE(error_seen);
  s->release();
  iterations(2);
  EXPECT_EQ(ev.closes, 1);
  ::close(listener);
}

// Closing with a recv armed and a send in flight: their completions come
// after the close and must touch nothing freed (ASan runs this too).
TEST_P(StreamTest, CloseWithOperationsInFlight) {
  for (int i = 0; i < 50; ++i) {
    Events ev;
    Stream* s;
    int peer = open_pair(&s, &ev);
    ASSERT_EQ(s->read_start(), 0);
    std::string big(1 << 20, 'y');
    ASSERT_EQ(s->write(big.data(), big.size()), 0);
    if (i % 2) iterations(1);  // half of them with the send submitted
    s->release();
    // Refused (EPIPE) once the fd is closed: epoll closes it at once.
    (void)::send(peer, "z", 1, MSG_NOSIGNAL);
    iterations(3);
    EXPECT_EQ(ev.closes, 1);
    EXPECT_TRUE(ev.data.empty());
    ::close(peer);
  }
}

// More streams receive at once than the ring has provided buffers: the
// multishot recvs that find none end with ENOBUFS and are re-armed, and
// every byte arrives.
TEST_P(StreamTest, MoreReadersThanBuffers) {
  constexpr int kStreams = static_cast<int>(shardloop::Ring::kBuffers) + 200;
  std::vector<Events> ev(kStreams);
  std::vector<Stream*> streams(kStreams);
  std::vector<int> peers(kStreams);
  run_until(
      [&] {
        for (int i = 0; i < kStreams; ++i) {
          int fds[2];
          if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return true;
          streams[i] = Stream::open(loop_, fds[0], Events::callbacks(&ev[i]));
          streams[i]->read_start();
          peers[i] = fds[1];
        }
        return true;
      },
      "open all");
  iterations(2);  // every recv armed
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kStreams; ++i) ASSERT_EQ(::write(peers[i], "ab", 2), 2);
    run_until(
        [&] {
          for (int i = 0; i < kStreams; ++i)
            if (ev[i].data.size() < std::size_t(2 * (round + 1))) return false;
          return true;
        },
        "all delivered");
  }
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(ev[i].data, "ababab");
    streams[i]->release();
    ::close(peers[i]);
  }
  iterations(3);
}

INSTANTIATE_TEST_SUITE_P(Backends, StreamTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

}  // namespace
