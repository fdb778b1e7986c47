// Echo server on every shard: each read is written straight back.
//   echo_server [--port P] [--shards N] [--host H] [--io-uring 1]
#include "serve_main.hpp"

int main(int argc, char** argv) {
  shardloop::TcpHandlers h;
  h.on_data = [](shardloop::Connection& c, const char* data, std::size_t len) { c.write(data, len); };
  return native_example::serve(argc, argv, h);
}
