// Shared by the native example servers: "--port P --shards N" parsing,
// SIGINT/SIGTERM stopping the runtime (waited for on a thread of its own,
// so no handler runs inside a shard), and the READY line the benchmark
// driver waits for.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

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
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // inherited by every shard
  shardloop::Runtime rt(ro);
  auto server = shardloop::TcpServer::listen(rt, so, handlers);
  std::thread signals([&] {
    int sig;
    sigwait(&set, &sig);
    rt.stop();
  });
  signals.detach();
  std::printf("READY %u shards=%u pinned=%d\n", server->port(), rt.shard_count(), rt.pinned());
  std::fflush(stdout);
  rt.run();
  auto per = server->connections_per_shard();
  std::printf("connections per shard:");
  for (auto n : per) std::printf(" %llu", static_cast<unsigned long long>(n));
  std::printf("\n");
  return 0;
}

}  // namespace native_example
