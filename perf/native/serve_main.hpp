// Shared by the native example servers: "--port P --shards N --host H
// --io-uring 0|1" parsing,
// SIGINT/SIGTERM stopping the runtime, and the READY line the benchmark
// driver waits for. The signals are libuv signal handles on shard 0, not a
// sigwait() thread: one extra thread puts glibc in multi-threaded mode, and
// then every read() and write() of a one-shard server pays for the
// cancellation-point bookkeeping (about 90 instructions per echo, callgrind).
// libuv's handler only writes to a pipe, whichever thread the signal hits.
#pragma once

#include <signal.h>
#include <uv.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "shardloop/runtime.hpp"
#include "shardloop/tcp_server.hpp"

namespace native_example {

inline int serve(int argc, char** argv, const shardloop::TcpHandlers& handlers) {
  shardloop::TcpServer::Options so;
  shardloop::Runtime::Options ro;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--port")) so.port = static_cast<std::uint16_t>(std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--shards")) ro.shards = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--host")) so.host = argv[i + 1];
    else if (!std::strcmp(argv[i], "--io-uring")) ro.io_uring = std::atoi(argv[i + 1]) != 0;
  }
  shardloop::Runtime rt(ro);
  auto server = shardloop::TcpServer::listen(rt, so, handlers);
  std::printf("READY %u shards=%u pinned=%d io_uring=%d\n", server->port(), rt.shard_count(), rt.pinned(), ro.io_uring);
  std::fflush(stdout);
  // Closed with the rest of shard 0's handles when its loop closes.
  static uv_signal_t stop_signals[2];
  rt.run([&rt](unsigned shard) {
    if (shard != 0) return;
    const int signums[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; ++i) {
      uv_signal_t* h = &stop_signals[i];
      uv_signal_init(rt.loop_of(0)->uv(), h);
      h->data = &rt;
      uv_signal_start(h, [](uv_signal_t* sh, int) { static_cast<shardloop::Runtime*>(sh->data)->stop(); }, signums[i]);
      uv_unref(reinterpret_cast<uv_handle_t*>(h));  // must not keep the loop busy
    }
  });
  auto per = server->connections_per_shard();
  std::printf("connections per shard:");
  for (auto n : per) std::printf(" %llu", static_cast<unsigned long long>(n));
  std::printf("\n");
  return 0;
}

}  // namespace native_example
