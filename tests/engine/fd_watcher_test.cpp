// FdWatcher on a socketpair: a callback reports exactly the watched events
// that are ready, watch() changes or stops what is watched, close() stops
// callbacks even for readiness already in the kernel, and the watched fd's
// blocking mode is the owner's, not libuv's.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <system_error>
#include <vector>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::FdWatcher;
using shardloop::Loop;
using shardloop_test::spin;
using shardloop_test::Watchdog;

// The events of each callback, in order; `on_event` (if set) runs after
// recording, e.g. to close the watcher from inside its own callback.
struct Seen {
  std::vector<int> events;
  std::function<void()> on_event;
  static void callback(void* ctx, int events) noexcept {
    auto* self = static_cast<Seen*>(ctx);
    self->events.push_back(events);
    if (self->on_event) self->on_event();
  }
};

class FdWatcherTest : public testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds_), 0); }
  void TearDown() override {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  void send_byte() { ASSERT_EQ(::write(fds_[1], "x", 1), 1); }

  int fds_[2] = {-1, -1};  // [0] is watched, [1] is the peer
};

TEST_F(FdWatcherTest, ReportsOnlyWatchedEventsThatAreReady) {
  Watchdog dog("ReportsOnlyWatchedEventsThatAreReady");
  Loop loop;
  Seen seen;
  auto* watcher = FdWatcher::open(loop, fds_[0], &Seen::callback, &seen);
  EXPECT_EQ(watcher->fd(), fds_[0]);  // the owner's fd, not the private dup
  watcher->watch(FdWatcher::kReadable | FdWatcher::kWritable);
  EXPECT_EQ(watcher->events(), FdWatcher::kReadable | FdWatcher::kWritable);
  // Nothing to read yet; an empty socket buffer is writable.
  spin(loop, 1);
  ASSERT_FALSE(seen.events.empty());
  EXPECT_EQ(seen.events.back(), FdWatcher::kWritable);

  send_byte();
  seen.events.clear();
  spin(loop, 1);
  ASSERT_FALSE(seen.events.empty());
  EXPECT_EQ(seen.events.back(), FdWatcher::kReadable | FdWatcher::kWritable);

  // Writable is still true, but no longer watched: it must not be reported.
  watcher->watch(FdWatcher::kReadable);
  seen.events.clear();
  spin(loop, 1);
  ASSERT_FALSE(seen.events.empty());
  EXPECT_EQ(seen.events.back(), FdWatcher::kReadable);

  watcher->release();
  loop.close();
}

TEST_F(FdWatcherTest, WatchZeroStopsCallbacks) {
  Watchdog dog("WatchZeroStopsCallbacks");
  Loop loop;
  Seen seen;
  auto* watcher = FdWatcher::open(loop, fds_[0], &Seen::callback, &seen);
  send_byte();
  watcher->watch(FdWatcher::kReadable);
  spin(loop, 3);
  // The control: unread data is reported every iteration.
  EXPECT_GE(seen.events.size(), 2u);
  watcher->watch(0);
  seen.events.clear();
  spin(loop, 3);
  EXPECT_TRUE(seen.events.empty());
  watcher->release();
  loop.close();
}

// Readiness that is already pending (the byte is unread) must not reach a
// callback once close() has run, whether close() comes before the poll or
// from inside the callback (the rest of that poll's events included).
TEST_F(FdWatcherTest, CloseBeforeThePollStopsCallbacks) {
  Watchdog dog("CloseBeforeThePollStopsCallbacks");
  Loop loop;
  Seen seen;
  auto* watcher = FdWatcher::open(loop, fds_[0], &Seen::callback, &seen);
  send_byte();
  watcher->watch(FdWatcher::kReadable);
  watcher->close();
  spin(loop, 3);
  EXPECT_TRUE(seen.events.empty());
  watcher->release();
  loop.close();
}

TEST_F(FdWatcherTest, CloseFromItsOwnCallbackStopsCallbacks) {
  Watchdog dog("CloseFromItsOwnCallbackStopsCallbacks");
  Loop loop;
  Seen seen;
  auto* watcher = FdWatcher::open(loop, fds_[0], &Seen::callback, &seen);
  seen.on_event = [&] { watcher->close(); };
  send_byte();
  watcher->watch(FdWatcher::kReadable);
  spin(loop, 3);  // without the close, 3 callbacks (see WatchZeroStopsCallbacks)
  EXPECT_EQ(seen.events.size(), 1u);
  EXPECT_TRUE(watcher->closed());
  // watch() on a closed watcher is ignored, not a libuv call on a closing handle.
  watcher->watch(FdWatcher::kReadable);
  spin(loop, 2);
  EXPECT_EQ(seen.events.size(), 1u);
  watcher->release();
  loop.close();
}

// libuv makes the fd it polls non-blocking; that flag lives on the open file
// the duplicate shares with the owner's fd, so open() must put it back.
TEST_F(FdWatcherTest, LeavesABlockingFdBlocking) {
  Loop loop;
  Seen seen;
  ASSERT_EQ(::fcntl(fds_[0], F_GETFL) & O_NONBLOCK, 0);
  auto* watcher = FdWatcher::open(loop, fds_[0], &Seen::callback, &seen);
  watcher->watch(FdWatcher::kReadable);
  EXPECT_EQ(::fcntl(fds_[0], F_GETFL) & O_NONBLOCK, 0);
  watcher->release();
  loop.close();
}

// epoll refuses regular files (EPERM); open() reports it and leaks nothing
// (LeakSanitizer checks the half-built watcher in the ASan build).
TEST_F(FdWatcherTest, RegularFileIsRefused) {
  Loop loop;
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  EXPECT_THROW(FdWatcher::open(loop, ::fileno(file), &Seen::callback, nullptr), std::system_error);
  std::fclose(file);
  loop.close();
}

}  // namespace
