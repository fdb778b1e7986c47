#pragma once

namespace shardloop {
inline constexpr const char* kVersion = "0.1.0";
}
