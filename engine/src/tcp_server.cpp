#include "shardloop/tcp_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "shardloop/acceptor.hpp"
#include "shardloop/fd_watcher.hpp"
#include "shardloop/timer.hpp"

namespace shardloop {

namespace {

// Made by hand because libuv 1.44 cannot set SO_REUSEPORT before bind.
int make_listener(const TcpServer::Options& o, std::uint16_t port) {
  sockaddr_storage ss{};
  socklen_t len;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, o.host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, o.host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof *v6;
  } else {
    throw std::system_error(EINVAL, std::generic_category(), "host must be an IP address literal: " + o.host);
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "socket");
  int one = 1;
  const char* what = nullptr;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) what = "SO_REUSEADDR";
  else if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) what = "SO_REUSEPORT";
  else if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) what = "bind";
  else if (::listen(fd, o.backlog) != 0) what = "listen";
  if (what) {
    int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), what);
  }
  return fd;
}

std::uint16_t bound_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) throw std::system_error(errno, std::generic_category(), "getsockname");
  return ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

constexpr int kAcceptBatch = 64;
// On the ring, out of descriptors: accepting pauses this long (asyncio's
// and the Python listeners' rule), where epoll's level-triggered poll
// retries at every iteration.
constexpr double kAcceptRetryDelay = 1.0;

}  // namespace

struct TcpServer::Shared {
  // One shard's listener: touched only on that shard's thread once set up.
  // It accepts on the loop's ring when the loop has one (Acceptor: a
  // multishot accept), else on readiness (an FdWatcher and accept4).
  struct alignas(64) Listener {
    std::atomic<std::uint64_t> accepted{0};
    Shared* owner = nullptr;
    Loop* loop = nullptr;
    FdWatcher* watcher = nullptr;
    Acceptor* acceptor = nullptr;
    std::unique_ptr<Timer> retry;  // with `acceptor`: resumes it after an out-of-descriptors stop
    unsigned shard = 0;
    int fd = -1;
    bool closed = false;
  };
  Runtime* rt = nullptr;
  std::shared_ptr<const TcpHandlers> handlers;
  bool nodelay = true;
  unsigned count = 0;
  std::unique_ptr<Listener[]> listeners;

  ~Shared() {
    // Listeners whose shard never picked them up.
    for (unsigned s = 0; s < count; ++s)
      if (listeners[s].fd >= 0) ::close(listeners[s].fd);
  }

  static void close_listener(Listener& l) noexcept {
    l.closed = true;
    l.retry.reset();
    if (l.acceptor) {
      l.acceptor->release();  // cancels the kernel's accept, submitted now: the socket is ours alone again
      l.acceptor = nullptr;
    }
    if (l.watcher) {
      l.watcher->release();  // stops the poll before the fd goes
      l.watcher = nullptr;
    }
    if (l.fd >= 0) ::close(l.fd);
    l.fd = -1;
  }

  struct Setup {
    std::shared_ptr<Shared> shared;
    unsigned shard;
  };
  static void setup(void* ctx, bool run) noexcept {
    std::unique_ptr<Setup> st(static_cast<Setup*>(ctx));
    Listener& l = st->shared->listeners[st->shard];
    if (!run || l.closed) {
      close_listener(l);
      return;
    }
    Runtime* rt = Runtime::current();
    l.loop = rt->loop_of(st->shard);
    try {
      l.retry = std::make_unique<Timer>(*l.loop, [&l] {
        if (l.acceptor) l.acceptor->resume();
      });
      l.acceptor = Acceptor::open(*l.loop, l.fd, Acceptor::Callbacks{&l, &Shared::on_ring_accept, &Shared::on_ring_error});
      if (l.acceptor == nullptr) {
        l.retry.reset();
        l.watcher = FdWatcher::open(*l.loop, l.fd, &Shared::on_accept, &l, /*duplicate=*/false);
        l.watcher->watch(FdWatcher::kReadable);
      }
      // The shard's exit closes the listener and lets go of the server.
      rt->at_exit([shared = st->shared, s = st->shard] { close_listener(shared->listeners[s]); });
    } catch (...) {
      close_listener(l);
      l.loop->report_error(std::current_exception());
    }
  }

  static void on_accept(void* ctx, int) noexcept {
    auto& l = *static_cast<Listener*>(ctx);
    for (int i = 0; i < kAcceptBatch && !l.closed; ++i) {
      int fd = ::accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        break;  // EAGAIN, or out of descriptors: the poll reports it again
      }
      start(l, fd);
    }
  }

  static void on_ring_accept(void* ctx, int fd) noexcept { start(*static_cast<Listener*>(ctx), fd); }

  // Errors other than running out of descriptors leave the accept armed
  // (as epoll's path goes on polling); out of them, it stopped and resumes
  // after kAcceptRetryDelay, with the connections it holds first.
  static void on_ring_error(void* ctx, int err) noexcept {
    auto& l = *static_cast<Listener*>(ctx);
    if (!Acceptor::out_of_resources(err) || l.closed || !l.retry) return;
    try {
      l.retry->start(kAcceptRetryDelay);
    } catch (...) {
      l.loop->report_error(std::current_exception());
    }
  }

  // A new connection (`fd` is ours): counted and served.
  static void start(Listener& l, int fd) noexcept {
    if (l.owner->nodelay) {
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    l.accepted.store(l.accepted.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    try {
      Connection::start(*l.loop, fd, l.owner->handlers, l.shard);  // closes fd on failure
    } catch (...) {
      l.loop->report_error(std::current_exception());
    }
  }
};

std::shared_ptr<TcpServer> TcpServer::listen(Runtime& rt, const Options& options, TcpHandlers handlers) {
  auto shared = std::make_shared<Shared>();
  shared->rt = &rt;
  shared->handlers = std::make_shared<const TcpHandlers>(std::move(handlers));
  shared->nodelay = options.nodelay;
  shared->count = rt.shard_count();
  shared->listeners.reset(new Shared::Listener[shared->count]);
  std::uint16_t port = options.port;
  for (unsigned s = 0; s < shared->count; ++s) {
    Shared::Listener& l = shared->listeners[s];
    l.owner = shared.get();
    l.shard = s;
    l.fd = make_listener(options, port);  // on failure ~Shared closes the others
    if (port == 0) port = bound_port(l.fd);
  }
  std::shared_ptr<TcpServer> server(new TcpServer());
  server->shared_ = shared;
  server->port_ = port;
  for (unsigned s = 0; s < shared->count; ++s) {
    auto* st = new Shared::Setup{shared, s};
    if (!rt.post(s, Work{&Shared::setup, st})) Shared::setup(st, false);
  }
  return server;
}

void TcpServer::close() {
  for (unsigned s = 0; s < shared_->count; ++s) {
    // Refused or discarded: the shard has stopped, and its exit (or the
    // discarded setup) closes the listener.
    shared_->rt->post(s, [shared = shared_, s] { Shared::close_listener(shared->listeners[s]); });
  }
}

std::vector<std::uint64_t> TcpServer::connections_per_shard() const {
  std::vector<std::uint64_t> out(shared_->count);
  for (unsigned s = 0; s < shared_->count; ++s) out[s] = shared_->listeners[s].accepted.load(std::memory_order_relaxed);
  return out;
}

TcpServer::~TcpServer() = default;

}  // namespace shardloop
