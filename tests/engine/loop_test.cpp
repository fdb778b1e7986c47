#include <gtest/gtest.h>

#include <vector>

#include "shardloop/shardloop.hpp"

namespace {

using shardloop::Loop;

TEST(Loop, CallSoonRunsInFifoOrder) {
  Loop loop;
  std::vector<int> seen;
  for (int i = 0; i < 5; ++i) loop.call_soon([&seen, i] { seen.push_back(i); });
  loop.call_soon([&] { loop.stop(); });
  EXPECT_EQ(loop.run(), Loop::Exit::stopped);
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
}

}  // namespace
