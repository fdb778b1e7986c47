// Choosing a loop's I/O backend (io_backend.cpp): Loop::set_io_backend(),
// io_backend(), io_fallback_reason(), when the choice is refused, and the
// ring's binding to the thread that first runs the loop.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

#include "../../engine/src/ring.hpp"
#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::IoBackend;
using shardloop::Loop;
using shardloop::Stream;
using shardloop_test::Events;

// A stream opened from inside `loop` (the only place a stream can get the
// ring), with one round trip through it; the stream is left open.
Stream* open_and_echo_once(Loop& loop, Events* ev, int* peer_out) {
  int fds[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Stream* s = nullptr;
  loop.call_soon([&] {
    s = Stream::open(loop, fds[0], Events::callbacks(ev));
    s->read_start();
  });
  shardloop_test::spin(loop, 2);
  EXPECT_EQ(::write(fds[1], "ping", 4), 4);
  for (int i = 0; i < 1000 && ev->data.size() < 4; ++i) shardloop_test::spin(loop, 1);
  EXPECT_EQ(ev->data, "ping");
  *peer_out = fds[1];
  return s;
}

TEST(IoBackend, DefaultIsEpoll) {
  Loop loop;
  EXPECT_EQ(loop.io_backend(), IoBackend::kEpoll);
  EXPECT_TRUE(loop.io_fallback_reason().empty());
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  EXPECT_FALSE(s->uses_ring());
  EXPECT_EQ(loop.ring(), nullptr);
  s->release();
  ::close(peer);
  loop.close();
}

TEST(IoBackend, EpollChosenExplicitly) {
  Loop loop;
  EXPECT_TRUE(loop.set_io_backend(IoBackend::kEpoll, true));
  EXPECT_EQ(loop.io_backend(), IoBackend::kEpoll);
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  EXPECT_FALSE(s->uses_ring());
  EXPECT_EQ(loop.ring(), nullptr);
  s->release();
  ::close(peer);
  loop.close();
}

// This kernel has rings: a strict choice succeeds, and the ring is made
// when the loop first runs, not before.
TEST(IoBackend, IoUringStrictlyOnThisKernel) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  EXPECT_EQ(loop.io_backend(), IoBackend::kIoUring);
  EXPECT_TRUE(loop.io_fallback_reason().empty());
  EXPECT_EQ(loop.ring(), nullptr);
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  EXPECT_TRUE(s->uses_ring());
  ASSERT_NE(loop.ring(), nullptr);
  const std::string setup = loop.ring()->setup();
  EXPECT_TRUE(setup == "SINGLE_ISSUER|DEFER_TASKRUN" || setup == "COOP_TASKRUN" || setup == "plain") << setup;
  EXPECT_GT(loop.ring()->enters(), 0u);
  s->release();
  ::close(peer);
  loop.close();
}

// The last choice made before the first run is the one that counts.
TEST(IoBackend, EpollAfterIoUringUndoesIt) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  EXPECT_TRUE(loop.set_io_backend(IoBackend::kEpoll));
  EXPECT_EQ(loop.io_backend(), IoBackend::kEpoll);
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  EXPECT_FALSE(s->uses_ring());
  EXPECT_EQ(loop.ring(), nullptr);
  s->release();
  ::close(peer);
  loop.close();
}

TEST(IoBackend, RefusedOnceTheLoopHasARing) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  ASSERT_NE(loop.ring(), nullptr);
  EXPECT_THROW(loop.set_io_backend(IoBackend::kEpoll), std::logic_error);
  EXPECT_THROW(loop.set_io_backend(IoBackend::kIoUring), std::logic_error);
  EXPECT_EQ(loop.io_backend(), IoBackend::kIoUring);
  // The stream is still on the ring and still reads.
  ASSERT_EQ(::write(peer, "more", 4), 4);
  for (int i = 0; i < 1000 && ev.data.size() < 8; ++i) shardloop_test::spin(loop, 1);
  EXPECT_EQ(ev.data, "pingmore");
  s->release();
  ::close(peer);
  loop.close();
}

TEST(IoBackend, RefusedWhileRunning) {
  Loop loop;
  int refusals = 0;
  loop.call_soon([&] {
    for (IoBackend b : {IoBackend::kEpoll, IoBackend::kIoUring}) {
      try {
        loop.set_io_backend(b);
      } catch (const std::logic_error&) {
        ++refusals;
      }
    }
  });
  shardloop_test::spin(loop, 2);
  EXPECT_EQ(refusals, 2);
  EXPECT_EQ(loop.io_backend(), IoBackend::kEpoll);
  loop.close();
}

// A loop that has run on epoll (no ring yet) may still choose io_uring:
// the ring comes with the next run, streams opened before keep epoll
// (a stream's backend never changes) and new ones take the ring.
TEST(IoBackend, ChosenAfterRunningOnEpollAppliesToNewStreams) {
  Loop loop;
  Events old_ev, new_ev;
  int old_peer, new_peer;
  Stream* old_s = open_and_echo_once(loop, &old_ev, &old_peer);
  ASSERT_FALSE(old_s->uses_ring());
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  Stream* new_s = open_and_echo_once(loop, &new_ev, &new_peer);
  EXPECT_TRUE(new_s->uses_ring());
  EXPECT_FALSE(old_s->uses_ring());
  ASSERT_EQ(::write(old_peer, "old", 3), 3);
  for (int i = 0; i < 1000 && old_ev.data.size() < 7; ++i) shardloop_test::spin(loop, 1);
  EXPECT_EQ(old_ev.data, "pingold");
  old_s->release();
  new_s->release();
  ::close(old_peer);
  ::close(new_peer);
  loop.close();
}

// Stream::open outside the running loop cannot know the ring's thread
// will submit for it: such a stream stays on epoll, and works.
TEST(IoBackend, StreamOpenedOutsideTheLoopStaysOnEpoll) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  shardloop_test::spin(loop, 1);
  ASSERT_NE(loop.ring(), nullptr);
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Events ev;
  Stream* s = Stream::open(loop, fds[0], Events::callbacks(&ev));
  EXPECT_FALSE(s->uses_ring());
  ASSERT_EQ(s->read_start(), 0);
  ASSERT_EQ(::write(fds[1], "abc", 3), 3);
  for (int i = 0; i < 1000 && ev.data.size() < 3; ++i) shardloop_test::spin(loop, 1);
  EXPECT_EQ(ev.data, "abc");
  s->release();
  ::close(fds[1]);
  loop.close();
}

// The ring belongs to the thread that first ran the loop (SINGLE_ISSUER):
// run() elsewhere throws, leaves the loop not running, and the owning
// thread can still run it.
TEST(IoBackend, RingLoopRunsOnlyOnItsFirstThread) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  shardloop_test::Latch first_done, second_allowed;
  bool second_ran = false;
  std::thread owner([&] {
    shardloop_test::spin(loop, 1);
    first_done.set();
    if (!second_allowed.wait(20)) return;
    shardloop_test::spin(loop, 1);
    second_ran = true;
  });
  ASSERT_TRUE(first_done.wait(20));
  ASSERT_NE(loop.ring(), nullptr);
  std::string what;
  try {
    loop.run();
  } catch (const std::logic_error& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("only on the thread that first ran it"), std::string::npos) << what;
  EXPECT_FALSE(loop.is_running());
  second_allowed.set();
  owner.join();
  EXPECT_TRUE(second_ran);
  loop.close();
}

// An epoll loop has no such binding: one thread after another may run it.
TEST(IoBackend, EpollLoopRunsOnAnyThread) {
  Loop loop;
  int runs = 0;
  for (int t = 0; t < 2; ++t) {
    std::thread([&] {
      loop.call_soon([&] { ++runs; });
      shardloop_test::spin(loop, 1);
    }).join();
  }
  loop.call_soon([&] { ++runs; });
  shardloop_test::spin(loop, 1);
  EXPECT_EQ(runs, 3);
  loop.close();
}

// The fallback, by really making ring setup fail: a child process whose
// seccomp filter refuses io_uring_setup with EPERM, as container runtimes'
// default profiles do. Choosing epoll afterwards clears the reason.
TEST(IoBackend, StrictFailsAndDefaultFallsBackWhenRingsAreRefused) {
  EXPECT_TRUE(shardloop_test::in_child_without_io_uring([] {
    Loop loop;
    bool strict_threw = false;
    try {
      loop.set_io_backend(IoBackend::kIoUring, true);
    } catch (const std::system_error& e) {
      strict_threw = e.code().value() == EPERM && std::string(e.what()).find("io_uring_setup") != std::string::npos;
    }
    Loop other;
    const bool fell_back = !other.set_io_backend(IoBackend::kIoUring, false) &&
                           other.io_backend() == IoBackend::kEpoll && !other.io_fallback_reason().empty();
    const bool cleared = other.set_io_backend(IoBackend::kEpoll) && other.io_fallback_reason().empty();
    return strict_threw && fell_back && cleared;
  }));
}

// The probe passed, but making the ring at the first run fails (here: the
// filter arrives in between, as a resource limit of the moment would): the
// loop runs on epoll and says why, instead of failing to run.
TEST(IoBackend, RingSetupFailingAtFirstRunFallsBackToEpoll) {
  Loop loop;
  ASSERT_TRUE(loop.set_io_backend(IoBackend::kIoUring, true));
  EXPECT_TRUE(shardloop_test::in_child_without_io_uring([&] {
    loop.after_fork();  // the parent's epoll set is not this child's
    Events ev;
    int peer;
    Stream* s = open_and_echo_once(loop, &ev, &peer);
    const bool ok = !s->uses_ring() && loop.ring() == nullptr && loop.io_backend() == IoBackend::kEpoll &&
                    loop.io_fallback_reason().find("io_uring_setup") != std::string::npos;
    return ok && ev.data == "ping";
  }));
  // The parent's own first run is unaffected.
  Events ev;
  int peer;
  Stream* s = open_and_echo_once(loop, &ev, &peer);
  EXPECT_TRUE(s->uses_ring());
  s->release();
  ::close(peer);
  loop.close();
}

}  // namespace
