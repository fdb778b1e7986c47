// SockWaits on real socketpairs, on both I/O backends: a waiting operation
// is called back when its side may be ready and not before, and again at
// the next poll while it stays ready (level-triggered, as asyncio's
// selector); one waiter per side (a new one replaces the old); a socket
// joins the epoll set once and later waits cost no epoll_ctl, and a side
// that reports readiness nobody waits for leaves the set; cancel and close
// stop callbacks; a socket closed while waited on is simply gone, and a new
// socket under the same number is registered afresh.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <system_error>
#include <utility>

#include "shardloop/shardloop.hpp"
#include "shardloop/sock_op.hpp"
#include "test_support.hpp"

namespace {

using shardloop::IoBackend;
using shardloop::Loop;
using shardloop::SockOp;
using shardloop::SockWaits;
using shardloop_test::spin;
using shardloop_test::Watchdog;

struct TestOp final : SockOp {
  int calls = 0;
  std::function<void()> then;
  void on_ready() noexcept override {
    ++calls;
    if (then) then();
  }
};

class SockOpTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) ASSERT_TRUE(loop_.set_io_backend(IoBackend::kIoUring, true));
    spin(loop_, 1);  // the ring (if any) exists from the first run on
    waits_ = SockWaits::open(loop_);
    pair(fds_);
  }
  void TearDown() override {
    if (!loop_.is_closed()) waits_->release();
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  static void pair(int fds[2]) {
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
  }
  // Runs the loop until `done` holds (checked once per iteration).
  void run_until(const std::function<bool()>& done, const char* what) {
    Watchdog dog(what, 10);
    std::function<void()> step = [&] {
      if (done())
        loop_.stop();
      else
        loop_.call_soon(step);
    };
    loop_.call_soon(step);
    loop_.run();
  }
  std::string recv_all(int fd) {
    std::string out;
    char buf[256];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) out.append(buf, static_cast<std::size_t>(n));
    return out;
  }

  Loop loop_;
  SockWaits* waits_ = nullptr;
  int fds_[2] = {-1, -1};  // [0] is waited on, [1] is the peer
};

TEST_P(SockOpTest, ReadWaiterIsCalledWhenDataArrivesAndNotBefore) {
  TestOp op;
  EXPECT_EQ(waits_->wait(&op, fds_[0], SockOp::kRead, true), nullptr);
  EXPECT_TRUE(op.waiting());
  EXPECT_EQ(waits_->size(), 1u);
  spin(loop_, 5);
  EXPECT_EQ(op.calls, 0);
  ASSERT_EQ(::send(fds_[1], "ab", 2, 0), 2);
  run_until([&] { return op.calls > 0; }, "read ready");
  EXPECT_EQ(recv_all(fds_[0]), "ab");
  EXPECT_TRUE(op.waiting());  // until its owner says it is done
  waits_->cancel(&op);
  EXPECT_FALSE(op.waiting());
  EXPECT_EQ(waits_->size(), 0u);
}

TEST_P(SockOpTest, LaterWaitsOnTheSameSocketCostNoEpollCtl) {
  for (int round = 0; round < 3; ++round) {
    TestOp op;
    op.then = [&] { waits_->cancel(&op); };
    waits_->wait(&op, fds_[0], SockOp::kRead, round == 0);
    ASSERT_EQ(::send(fds_[1], "x", 1, 0), 1);
    run_until([&] { return op.calls > 0; }, "read ready");
    EXPECT_EQ(recv_all(fds_[0]), "x");
  }
  EXPECT_EQ(waits_->ctl_calls(), 1u);
}

TEST_P(SockOpTest, WaiterThatLeavesTheDataIsCalledAgain) {
  TestOp op;
  waits_->wait(&op, fds_[0], SockOp::kRead, true);
  ASSERT_EQ(::send(fds_[1], "x", 1, 0), 1);
  run_until([&] { return op.calls >= 3; }, "called at each poll");  // never reads: still ready
  waits_->cancel(&op);
  EXPECT_EQ(recv_all(fds_[0]), "x");
}

TEST_P(SockOpTest, ReadinessNobodyWaitsForTakesTheSideOutOfTheSet) {
  // Some wait must keep the loop polling (with none, an iteration that
  // has work ready skips the poll): the peer's read side, never ready.
  TestOp keeper;
  waits_->wait(&keeper, fds_[1], SockOp::kRead, true);
  const std::uint64_t base = waits_->ctl_calls();
  TestOp op;
  op.then = [&] {
    recv_all(fds_[0]);
    waits_->cancel(&op);
  };
  waits_->wait(&op, fds_[0], SockOp::kRead, true);
  ASSERT_EQ(::send(fds_[1], "1", 1, 0), 1);
  run_until([&] { return op.calls == 1; }, "first");
  EXPECT_EQ(waits_->ctl_calls() - base, 1u);  // ADD
  ASSERT_EQ(::send(fds_[1], "2", 1, 0), 1);  // nobody waits: reported once, then out
  spin(loop_, 5);
  EXPECT_EQ(waits_->ctl_calls() - base, 2u);  // DEL
  spin(loop_, 5);
  EXPECT_EQ(waits_->ctl_calls() - base, 2u);
  EXPECT_EQ(op.calls, 1);
  waits_->wait(&op, fds_[0], SockOp::kRead, false);  // back in: ADD, and the data is there
  run_until([&] { return op.calls == 2; }, "second");
  EXPECT_EQ(waits_->ctl_calls() - base, 3u);
  waits_->cancel(&op);
  waits_->cancel(&keeper);
}

TEST_P(SockOpTest, AWriterDoneLeavesTheReaderAlone) {
  TestOp reader, writer;
  writer.then = [&] { waits_->cancel(&writer); };
  waits_->wait(&reader, fds_[0], SockOp::kRead, true);
  waits_->wait(&writer, fds_[0], SockOp::kWrite, false);
  run_until([&] { return writer.calls == 1; }, "writable");
  spin(loop_, 5);  // still writable, nobody writes: the write side leaves
  EXPECT_EQ(writer.calls, 1);
  EXPECT_EQ(reader.calls, 0);
  ASSERT_EQ(::send(fds_[1], "r", 1, 0), 1);
  run_until([&] { return reader.calls > 0; }, "reader still served");
  waits_->cancel(&reader);
}

TEST_P(SockOpTest, OneWaiterPerSideTheNewOneReplaces) {
  TestOp first, second, writer;
  waits_->wait(&first, fds_[0], SockOp::kRead, true);
  EXPECT_EQ(waits_->wait(&second, fds_[0], SockOp::kRead, false), &first);
  EXPECT_FALSE(first.waiting());
  EXPECT_EQ(waits_->waiter(fds_[0], SockOp::kRead), &second);
  waits_->wait(&writer, fds_[0], SockOp::kWrite, false);
  EXPECT_EQ(waits_->size(), 2u);
  ASSERT_EQ(::send(fds_[1], "x", 1, 0), 1);
  run_until([&] { return second.calls > 0; }, "read ready");
  EXPECT_EQ(first.calls, 0);
  waits_->cancel(&second);
  waits_->cancel(&writer);
  EXPECT_EQ(waits_->size(), 0u);
}

TEST_P(SockOpTest, WriterOfASocketWithRoomIsCalled) {
  TestOp op;
  waits_->wait(&op, fds_[0], SockOp::kWrite, true);
  run_until([&] { return op.calls > 0; }, "write ready");
  waits_->cancel(&op);
}

TEST_P(SockOpTest, WriterWaitsForRoomAfterAFullBuffer) {
  std::string chunk(65536, 'z');
  while (::send(fds_[0], chunk.data(), chunk.size(), 0) > 0) {
  }
  TestOp op;
  waits_->wait(&op, fds_[0], SockOp::kWrite, true);
  spin(loop_, 3);
  const int before = op.calls;  // a registration may report the edge it found
  spin(loop_, 3);
  EXPECT_EQ(op.calls, before);
  recv_all(fds_[1]);
  run_until([&] { return op.calls > before; }, "room again");
  waits_->cancel(&op);
}

TEST_P(SockOpTest, CancelledWaiterHearsNothing) {
  TestOp op;
  waits_->wait(&op, fds_[0], SockOp::kRead, true);
  waits_->cancel(&op);
  waits_->cancel(&op);  // idempotent
  ASSERT_EQ(::send(fds_[1], "x", 1, 0), 1);
  spin(loop_, 5);
  EXPECT_EQ(op.calls, 0);
}

TEST_P(SockOpTest, SocketClosedWhileWaitedOnThenItsNumberReused) {
  TestOp op;
  const int number = fds_[0];
  waits_->wait(&op, number, SockOp::kRead, true);
  ::close(fds_[0]);  // leaves the set with its file: nothing to report
  fds_[0] = -1;
  (void)!::send(fds_[1], "x", 1, MSG_NOSIGNAL);  // EPIPE: its peer is gone
  spin(loop_, 5);
  EXPECT_EQ(op.calls, 0);
  waits_->cancel(&op);
  ::close(fds_[1]);
  pair(fds_);
  if (fds_[0] != number && fds_[1] == number) std::swap(fds_[0], fds_[1]);
  if (fds_[0] != number) GTEST_SKIP() << "the number went elsewhere";
  TestOp again;
  waits_->wait(&again, fds_[0], SockOp::kRead, /*fresh=*/true);
  ASSERT_EQ(::send(fds_[1], "y", 1, 0), 1);
  run_until([&] { return again.calls > 0; }, "reused number");
  EXPECT_EQ(recv_all(fds_[0]), "y");
  waits_->cancel(&again);
}

TEST_P(SockOpTest, ANumberWithoutASocketIsRefused) {
  TestOp op;
  int bad = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(bad, 0);
  ::close(bad);
  try {
    waits_->wait(&op, bad, SockOp::kRead, true);
    FAIL() << "no error";
  } catch (const std::system_error& e) {
    EXPECT_EQ(e.code().value(), EBADF);
  }
  EXPECT_FALSE(op.waiting());
  EXPECT_EQ(waits_->size(), 0u);
}

TEST_P(SockOpTest, ClosingTheLoopEndsEveryWait) {
  TestOp reader, writer;
  waits_->wait(&reader, fds_[0], SockOp::kRead, true);
  waits_->wait(&writer, fds_[1], SockOp::kWrite, true);
  loop_.close();
  EXPECT_FALSE(reader.waiting());
  EXPECT_FALSE(writer.waiting());
  waits_->release();
}

TEST_P(SockOpTest, CallbackMayStartTheNextWaitOnTheSameSocket) {
  TestOp a, b;
  int got = 0;
  a.then = [&] {
    recv_all(fds_[0]);
    ++got;
    waits_->cancel(&a);
    waits_->wait(&b, fds_[0], SockOp::kRead, false);
  };
  b.then = [&] {
    recv_all(fds_[0]);
    ++got;
    waits_->cancel(&b);
  };
  waits_->wait(&a, fds_[0], SockOp::kRead, true);
  ASSERT_EQ(::send(fds_[1], "1", 1, 0), 1);
  run_until([&] { return got == 1; }, "first");
  ASSERT_EQ(::send(fds_[1], "2", 1, 0), 1);
  run_until([&] { return got == 2; }, "second");
  EXPECT_EQ(waits_->size(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, SockOpTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "io_uring" : "epoll"; });

}  // namespace
