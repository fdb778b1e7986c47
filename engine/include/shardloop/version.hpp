#pragma once

// The one place the version is written: CMakeLists.txt (project VERSION),
// pyproject.toml (scikit-build-core's regex provider) and shardloop.__version__
// (through _core.engine_version) all read this line.
namespace shardloop {
inline constexpr const char* kVersion = "0.1.0";
}
