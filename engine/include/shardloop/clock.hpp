#pragma once

#include <time.h>

namespace shardloop {

// CLOCK_MONOTONIC in seconds: the clock behind Python's time.monotonic(),
// so loop.time() agrees with asyncio's.
inline double monotonic_now() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace shardloop
