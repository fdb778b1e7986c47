// Connection churn against an echo server: each of N client threads
// connects, sends 32 bytes, reads them back and resets the connection
// (SO_LINGER 0: no TIME_WAIT, so the ephemeral ports last), over and over.
// Prints connections per second. Measures a server's accept path, which
// the echo benchmark (100 connections made once) does not.
//   accept_churn PORT [SECONDS=5] [THREADS=4]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

bool one_connection(const sockaddr_in& addr) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  char msg[32] = "accept churn: one short message";
  char back[32];
  if (ok) ok = ::send(fd, msg, sizeof msg, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof msg);
  std::size_t got = 0;
  while (ok && got < sizeof back) {
    ssize_t n = ::recv(fd, back + got, sizeof back - got, 0);
    if (n <= 0) ok = false;
    else got += static_cast<std::size_t>(n);
  }
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: accept_churn PORT [SECONDS=5] [THREADS=4]\n");
    return 2;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(std::atoi(argv[1])));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const double seconds = argc > 2 ? std::atof(argv[2]) : 5.0;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 4;
  std::atomic<bool> stop{false};
  std::atomic<long> done{0}, failed{0};
  std::vector<std::thread> pool;
  const auto start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) (one_connection(addr) ? done : failed).fetch_add(1);
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true);
  for (auto& th : pool) th.join();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%.0f connections/s (%ld in %.2f s, %ld failed)\n", done.load() / elapsed, done.load(), elapsed,
              failed.load());
  return failed.load() == 0 ? 0 : 1;
}
