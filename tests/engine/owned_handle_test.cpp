// OwnedHandle, the one lifecycle of engine objects that own a libuv handle:
// close() is idempotent and stops callbacks at once; the memory goes only
// when both libuv has closed the handle and the owner has called release(),
// in either order; Loop::close() closes whatever owners left open.
#include <gtest/gtest.h>

#include <uv.h>

#include "shardloop/shardloop.hpp"
#include "test_support.hpp"

namespace {

using shardloop::Loop;
using shardloop_test::spin;
using shardloop_test::Watchdog;

// What the probe records lives outside it, so it can be read after the
// probe is freed.
struct Record {
  int on_close = 0;  // on_close() calls
  int ticks = 0;     // idle callbacks seen
  bool freed = false;
};

// The smallest owner: a uv_idle_t (active means "call me every iteration",
// so a callback after close() would show at once).
class Probe final : public shardloop::OwnedHandle {
 public:
  Probe(Loop& loop, Record& record) : OwnedHandle(loop), record_(record) {
    uv_idle_init(loop.uv(), &idle_);
    idle_.data = this;
    uv_idle_start(&idle_, [](uv_idle_t* h) { ++static_cast<Probe*>(h->data)->record_.ticks; });
  }

 private:
  ~Probe() override { record_.freed = true; }
  uv_handle_t* uv_handle() noexcept override { return reinterpret_cast<uv_handle_t*>(&idle_); }
  void on_close() noexcept override {
    ++record_.on_close;
    uv_idle_stop(&idle_);
  }

  uv_idle_t idle_{};
  Record& record_;
};

TEST(OwnedHandle, CallbacksRunUntilCloseAndNotAfter) {
  Watchdog dog("OwnedHandle.CallbacksRunUntilCloseAndNotAfter");
  Loop loop;
  Record record;
  auto* probe = new Probe(loop, record);
  spin(loop, 3);
  // The control: an open probe is called, so the zero below means something.
  EXPECT_GT(record.ticks, 0);
  const int ticks = record.ticks;
  probe->close();
  spin(loop, 3);
  EXPECT_EQ(record.ticks, ticks);
  probe->release();
  loop.close();
}

TEST(OwnedHandle, CloseIsIdempotent) {
  Watchdog dog("OwnedHandle.CloseIsIdempotent");
  Loop loop;
  Record record;
  auto* probe = new Probe(loop, record);
  EXPECT_FALSE(probe->closed());
  probe->close();
  EXPECT_TRUE(probe->closed());
  // A second close() must not close the libuv handle twice (libuv asserts)
  // nor run on_close() again; release() closes too and must not either.
  probe->close();
  spin(loop, 2);
  probe->close();
  probe->release();
  EXPECT_EQ(record.on_close, 1);
  loop.close();
}

// close(), then libuv finishes closing: the owner still holds the object,
// so it must stay readable until release().
TEST(OwnedHandle, FreedAtReleaseWhenLibuvClosedFirst) {
  Watchdog dog("OwnedHandle.FreedAtReleaseWhenLibuvClosedFirst");
  Loop loop;
  Record record;
  auto* probe = new Probe(loop, record);
  probe->close();
  spin(loop, 2);
  EXPECT_FALSE(record.freed);
  EXPECT_TRUE(probe->closed());  // a use after free here would show under ASan
  probe->release();
  EXPECT_TRUE(record.freed);
  loop.close();
}

// release() first: libuv still holds the handle until its close callback,
// so the memory must outlive release() and go in that callback.
TEST(OwnedHandle, FreedByLibuvsCloseCallbackWhenReleasedFirst) {
  Watchdog dog("OwnedHandle.FreedByLibuvsCloseCallbackWhenReleasedFirst");
  Loop loop;
  Record record;
  auto* probe = new Probe(loop, record);
  probe->release();
  EXPECT_FALSE(record.freed);
  spin(loop, 2);
  EXPECT_TRUE(record.freed);
  EXPECT_EQ(record.on_close, 1);
  loop.close();
}

// Owners that never closed: Loop::close() closes them (on_close runs, the
// handle goes back to libuv before uv_loop_close, which would fail with
// EBUSY otherwise); the owners' release() then frees them.
TEST(OwnedHandle, LoopCloseClosesWhatOwnersLeftOpen) {
  Watchdog dog("OwnedHandle.LoopCloseClosesWhatOwnersLeftOpen");
  Loop loop;
  Record records[3];
  Probe* probes[3];
  for (int i = 0; i < 3; ++i) probes[i] = new Probe(loop, records[i]);
  probes[1]->close();  // one already closed: not closed a second time
  loop.close();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(probes[i]->closed());
    EXPECT_EQ(records[i].on_close, 1);
    EXPECT_FALSE(records[i].freed);  // the owners have not released them
  }
  for (auto* probe : probes) probe->release();
  for (auto& record : records) EXPECT_TRUE(record.freed);
}

}  // namespace
