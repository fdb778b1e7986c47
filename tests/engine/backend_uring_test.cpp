// What is the io_uring backend's own (backend_uring.cpp, ring.hpp): the
// provided buffers running out mid-stream, completions for a stream closed
// in the same batch, the gather's bound, the eventfd waking a sleeping
// loop, Loop::close() draining what is in flight, the ring orphaned in a
// fork child, and a 64 MiB transfer each way. What both backends share is
// in stream_test.cpp (including more streams reading than there are
// provided buffers, MoreReadersThanBuffers).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "../../engine/src/ring.hpp"
#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::Loop;
using shardloop::Ring;
using shardloop::Stream;
using shardloop_test::Events;
using shardloop_test::pattern;

class UringTest : public ::testing::Test, public shardloop_test::StreamHarness {
 protected:
  void SetUp() override { use_ring(true); }
};

// Every stream has several buffers' worth waiting when the loop next asks
// the kernel: together more than the pool's largest size, so multishot
// recvs end with ENOBUFS partway through a stream's bytes and are re-armed.
// Nothing may be lost or reordered across that, and the pool, with more
// recvs refused in one pass than it has buffers, grows.
TEST_F(UringTest, BuffersRunningOutMidStreamLoseNothing) {
  constexpr int kStreams = static_cast<int>(Ring::kBuffers) / 4 + 16;
  constexpr std::size_t kEach = 4 * Ring::kBufferSize;  // 4 buffers a stream
  static_assert(kStreams * 4 > static_cast<int>(Ring::kBuffers), "must need more buffers than the ring has");
  std::vector<Events> ev(kStreams);
  std::vector<Stream*> streams(kStreams);
  std::vector<int> peers(kStreams);
  std::vector<std::string> sent(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    int size = 1 << 20;
    ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    peers[i] = fds[1];
    streams[i] = open(fds[0], &ev[i]);
    ASSERT_EQ(streams[i]->read_start(), 0);
  }
  iterations(2);  // every recv armed
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kStreams; ++i) {
      const std::string chunk = pattern(kEach, static_cast<unsigned>(i * 2 + round));
      ASSERT_EQ(::send(peers[i], chunk.data(), chunk.size(), MSG_DONTWAIT), static_cast<ssize_t>(chunk.size()));
      sent[i] += chunk;
    }
    run_until(
        [&] {
          for (int i = 0; i < kStreams; ++i)
            if (ev[i].data.size() < sent[i].size()) return false;
          return true;
        },
        "all delivered");
  }
  EXPECT_GT(loop_.ring()->posted_buffers(), Ring::kInitialBuffers);
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_TRUE(ev[i].data == sent[i]) << "stream " << i;
    EXPECT_TRUE(ev[i].statuses.empty());
    streams[i]->release();
    ::close(peers[i]);
  }
  iterations(3);
}

// The first delivery of a batch closes every other stream; their
// completions already taken off the ring (and those of their cancelled
// recvs) must reach no owner and touch nothing freed, and each fd is closed
// once its last completion is in.
TEST_F(UringTest, CompletionsOfAStreamClosedInTheSameBatchAreDropped) {
  constexpr int kStreams = 16;
  std::vector<Events> ev(kStreams);
  std::vector<Stream*> streams(kStreams);
  std::vector<int> peers(kStreams);
  std::vector<bool> released(kStreams, false);
  int first = -1;
  for (int i = 0; i < kStreams; ++i) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peers[i] = fds[1];
    streams[i] = open(fds[0], &ev[i]);
    ASSERT_EQ(streams[i]->read_start(), 0);
    ev[i].on_data = [&, i] {
      if (first >= 0) return;
      first = i;
      for (int j = 0; j < kStreams; ++j) {
        if (j == i) continue;
        streams[j]->release();
        released[j] = true;
      }
    };
  }
  iterations(2);
  for (int i = 0; i < kStreams; ++i) ASSERT_EQ(::write(peers[i], "data", 4), 4);
  run_until([&] { return first >= 0; }, "first delivery");
  iterations(3);
  ASSERT_GE(first, 0);
  for (int i = 0; i < kStreams; ++i) {
    if (i == first) {
      EXPECT_EQ(ev[i].data, "data");
      continue;
    }
    EXPECT_TRUE(ev[i].data.empty()) << "stream " << i << " heard of data after its close";
    EXPECT_TRUE(ev[i].statuses.empty());
    EXPECT_EQ(ev[i].closes, 1);
    // Its fd is closed: the peer reads EOF.
    char c;
    EXPECT_EQ(::recv(peers[i], &c, 1, MSG_DONTWAIT), 0) << "stream " << i << "'s fd is still open";
  }
  streams[first]->release();
  iterations(2);
  for (int p : peers) ::close(p);
}

// A delivery never exceeds the loop's read buffer, however many
// completions are waiting, yet does gather several of them; the bytes
// stay in order across deliveries. One stream's backlog fits the initial
// pool: no recv goes without a buffer and the pool stays small.
TEST_F(UringTest, GatherIsBoundedByTheReadBufferAndKeepsOrder) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  int size = 4 << 20;
  ASSERT_EQ(::setsockopt(peer, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size), 0);  // root here
  const std::string data = pattern(Loop::kReadBufferSize * 3 + 1234, 7);
  ASSERT_EQ(::send(peer, data.data(), data.size(), MSG_DONTWAIT), static_cast<ssize_t>(data.size()));
  ASSERT_EQ(s->read_start(), 0);
  run_until([&] { return ev.data.size() == data.size(); }, "gathered reads");
  EXPECT_TRUE(ev.data == data);
  EXPECT_LE(ev.largest, Loop::kReadBufferSize);
  EXPECT_GT(ev.largest, std::size_t(Ring::kBufferSize));
  EXPECT_GE(ev.deliveries, 4u);
  EXPECT_EQ(loop_.io_stats().recv_enobufs, 0u);
  EXPECT_EQ(loop_.ring()->posted_buffers(), Ring::kInitialBuffers);
  s->release();
  iterations(2);
  ::close(peer);
}

struct WaitHooks {
  shardloop_test::Latch asleep;
  int waits = 0;
  static void before(void* ctx) {
    auto* self = static_cast<WaitHooks*>(ctx);
    ++self->waits;
    self->asleep.set();
  }
};

// The loop blocks in epoll with only a multishot recv in the kernel; bytes
// sent then (from another thread) must wake it through the ring's eventfd.
TEST_F(UringTest, RingEventfdWakesASleepingLoop) {
  Events ev;
  Stream* s;
  int peer = open_pair(&s, &ev);
  ASSERT_EQ(s->read_start(), 0);
  WaitHooks hooks;
  loop_.set_hooks(Loop::Hooks{&hooks, &WaitHooks::before, nullptr, nullptr});
  ev.on_data = [&] { loop_.stop(); };
  std::thread sender([&] {
    if (hooks.asleep.wait(20)) (void)::write(peer, "wake", 4);
  });
  {
    shardloop_test::Watchdog dog("woken by the ring's eventfd", 20);
    loop_.run();
  }
  sender.join();
  loop_.set_hooks(Loop::Hooks{});
  EXPECT_GE(hooks.waits, 1);
  EXPECT_EQ(ev.data, "wake");
  s->release();
  iterations(2);
  ::close(peer);
}

// Streams left open with a recv armed and a large send in flight when
// the loop closes: each owner hears on_close once, the ring waits for the
// cancellations, and every fd is closed (the peer reads all that was
// sent, then EOF). `closer` runs Loop::close().
void close_with_operations_in_flight(UringTest* t, Loop& loop, const std::function<void(Loop&)>& closer) {
  constexpr int kStreams = 8;
  std::vector<Events> ev(kStreams);
  std::vector<Stream*> streams(kStreams);
  std::vector<int> peers(kStreams);
  const std::string big(2 << 20, 'b');
  for (int i = 0; i < kStreams; ++i) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    peers[i] = fds[1];
    streams[i] = t->open(fds[0], &ev[i]);
    ASSERT_EQ(streams[i]->read_start(), 0);
    ASSERT_EQ(streams[i]->write(big.data(), big.size()), 0);
    ASSERT_GT(streams[i]->queued(), 0u);
  }
  t->iterations(2);  // recvs armed, sends submitted
  closer(loop);
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(ev[i].closes, 1);
    // Whatever the send got out, then EOF: the socket was closed. (Once
    // a ring is torn down the kernel drops its requests' hold on the socket
    // from a worker, a moment later: the read may wait for that.)
    char buf[65536];
    ssize_t n;
    std::size_t total = 0;
    ::fcntl(peers[i], F_SETFL, 0);
    ::timeval tv{10, 0};  // a bound, so that a socket never closed fails
    ::setsockopt(peers[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    // EINTR: the kernel runs the torn-down ring's task work on this (the
    // submitter) thread, which interrupts a blocking call.
    while ((n = ::recv(peers[i], buf, sizeof buf, 0)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) total += static_cast<std::size_t>(n);
    EXPECT_EQ(n, 0) << "stream " << i << "'s socket is still open: " << (n < 0 ? std::strerror(errno) : "data");
    EXPECT_LE(total, big.size());
    streams[i]->release();
    ::close(peers[i]);
  }
}

TEST_F(UringTest, LoopCloseDrainsOperationsInFlight) {
  close_with_operations_in_flight(this, loop_, [](Loop& loop) { loop.close(); });
}

// Python may close a loop from a thread other than the one that ran it
// (it is not running then); the ring only takes submissions from its own
// thread, yet what was in flight must still end and the fds be closed.
TEST_F(UringTest, LoopClosedFromAnotherThreadStillClosesItsStreams) {
  close_with_operations_in_flight(this, loop_, [](Loop& loop) { std::thread([&] { loop.close(); }).join(); });
}

TEST_F(UringTest, Transfers64MiBEachWayByteExact) { shardloop_test::transfer_both_ways(*this); }

// Runs `fn` in a forked child (no threads are made there: TSan forbids it
// in the child of a threaded process); true when it returned true.
template <typename F>
bool in_child(F fn) {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(fn() ? 0 : 1);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// After fork the child shares the ring's memory with the parent: its loop
// orphans the ring (never submits or reaps again) and gives new streams
// epoll; the parent's ring stream carries on unaffected.
TEST_F(UringTest, ForkChildOrphansTheRingAndUsesEpoll) {
  Events parent_ev;
  Stream* parent_s;
  int parent_peer = open_pair(&parent_s, &parent_ev);
  ASSERT_EQ(parent_s->read_start(), 0);
  ASSERT_NE(loop_.ring(), nullptr);
  EXPECT_TRUE(in_child([&] {
    loop_.after_fork();
    if (loop_.ring() != nullptr || loop_.io_backend() != shardloop::IoBackend::kEpoll) return false;
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return false;
    Events ev;
    Stream* s = nullptr;
    loop_.call_soon([&] {
      s = Stream::open(loop_, fds[0], Events::callbacks(&ev));
      s->read_start();
    });
    shardloop_test::spin(loop_, 2);
    if (s == nullptr || s->uses_ring()) return false;
    if (::write(fds[1], "child", 5) != 5) return false;
    for (int i = 0; i < 1000 && ev.data.size() < 5; ++i) shardloop_test::spin(loop_, 1);
    // A write on the epoll stream goes out too.
    if (s->write("back", 4) != 0) return false;
    std::string back;
    if (!shardloop_test::read_exactly(fds[1], back, 4)) return false;
    return ev.data == "child" && back == "back";
  }));
  ASSERT_EQ(::write(parent_peer, "parent", 6), 6);
  run_until([&] { return parent_ev.data.size() >= 6; }, "parent stream after fork");
  EXPECT_EQ(parent_ev.data, "parent");
  EXPECT_TRUE(parent_s->uses_ring());
  parent_s->release();
  iterations(2);
  ::close(parent_peer);
}

}  // namespace
