// Closed-loop echo load generator: N connections, each sends one message of
// S bytes and waits for all S bytes to come back before sending the next, so
// throughput and latency are those of the server, not of a queue in front of
// it. One thread, non-blocking sockets, level-triggered epoll.
//
//   loadgen --port P [--host 127.0.0.1] [--connections 10] [--size 1024]
//           [--duration 10] [--warmup 1] [--tls] [--tls-ca CERT.pem] [--udp]
//
// --udp: each "connection" is a connected UDP socket that sends one datagram
// of S bytes (at most 65,507) and waits for the echoed datagram. A datagram
// the kernel dropped would stall its socket for good, so a request with no
// answer after one second is sent again and counted in "lost".
//
// --tls (only in a build with -DLOADGEN_TLS, linked with -lssl -lcrypto):
// the same echo over TLS with OpenSSL's defaults. Each connection does its
// handshake once, blocking, before the clock starts; --tls-ca makes it verify
// the server's certificate against that file (host name not checked).
//
// stdout, one line each: "MEASURE" when the measured interval starts, "END"
// when it ends (the driver samples the server's CPU time at both), then one
// JSON object. Errors go to stderr with exit status 1.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <csignal>
#include <unistd.h>

#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    int connections = 10;
    size_t size = 1024;
    double duration = 10.0;
    double warmup = 1.0;
    bool tls = false;
    std::string tls_ca;  // empty: no verification
    bool udp = false;
};

// What an I/O call that moved no bytes waits for. Plain sockets only ever
// wait for their own direction; a TLS read may need to write (a key update)
// and a TLS write may need to read.
enum class Wait { Read, Write };

struct Connection {
    int fd = -1;
#ifdef LOADGEN_TLS
    SSL* ssl = nullptr;
#endif
    size_t sent = 0;      // bytes of the current message written so far
    size_t received = 0;  // bytes of its echo read so far
    Clock::time_point started;
    bool want_write = false;  // EPOLLOUT registered
    Wait write_waits = Wait::Write;  // what the unfinished write waits for
    Wait read_waits = Wait::Read;    // what the last read waited for
};

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "loadgen: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "loadgen: %s\nusage: loadgen --port P [--host H] [--connections N] "
                 "[--size BYTES] [--duration S] [--warmup S] [--tls] [--tls-ca FILE] [--udp]\n",
                 msg);
    std::exit(2);
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--tls" || a == "--udp") {
            (a == "--tls" ? o.tls : o.udp) = true;
            continue;
        }
        if (i + 1 >= argc) usage(("missing value for " + a).c_str());
        const char* v = argv[++i];
        if (a == "--host") o.host = v;
        else if (a == "--port") o.port = std::atoi(v);
        else if (a == "--connections") o.connections = std::atoi(v);
        else if (a == "--size") o.size = std::strtoull(v, nullptr, 10);
        else if (a == "--duration") o.duration = std::atof(v);
        else if (a == "--warmup") o.warmup = std::atof(v);
        else if (a == "--tls-ca") o.tls_ca = v;
        else usage(("unknown option " + a).c_str());
    }
    if (o.port <= 0 || o.port > 65535) usage("--port is required (1-65535)");
    if (o.connections < 1 || o.size < 1 || o.duration <= 0 || o.warmup < 0)
        usage("connections, size and duration must be positive");
    if (!o.tls_ca.empty() && !o.tls) usage("--tls-ca needs --tls");
    if (o.udp && (o.tls || o.size > 65507)) usage("--udp: no TLS, and --size at most 65507 (one datagram)");
#ifndef LOADGEN_TLS
    if (o.tls) usage("--tls: this build has no TLS (compile with -DLOADGEN_TLS -lssl -lcrypto)");
#endif
    return o;
}

#ifdef LOADGEN_TLS
[[noreturn]] void die_tls(const char* what) {
    std::fprintf(stderr, "loadgen: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    std::exit(1);
}

SSL_CTX* make_tls_context(const Options& o) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die_tls("SSL_CTX_new");
    if (!o.tls_ca.empty()) {
        if (SSL_CTX_load_verify_locations(ctx, o.tls_ca.c_str(), nullptr) != 1) die_tls("loading --tls-ca");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    }
    // Partial writes make SSL_write behave like send(): it returns after each
    // record, and a retry may pass the rest of the message from a new offset.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

// The handshake, on the still-blocking socket, so that it is over before any
// timing starts and costs the measured interval nothing.
SSL* tls_handshake(SSL_CTX* ctx, int fd) {
    SSL* ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1) die_tls("SSL_new");
    if (SSL_connect(ssl) != 1) die_tls("TLS handshake");
    return ssl;
}
#endif

int connect_to(const Options& o) {
    int fd = socket(AF_INET, o.udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(o.port));
    if (inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1) usage("--host must be an IPv4 address");
    // Blocking connect keeps set-up simple; it happens before any timing.
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) die("connect");
    if (o.udp) return fd;
    int one = 1;
    // Without it a small write can sit in Nagle's buffer waiting for an ACK
    // and the benchmark measures delayed-ACK timers instead of the server.
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void set_events(int ep, Connection& c, bool want_write) {
    if (c.want_write == want_write) return;
    epoll_event ev{};
    ev.events = EPOLLIN | (want_write ? EPOLLOUT : 0u);
    ev.data.ptr = &c;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev) < 0) die("epoll_ctl");
    c.want_write = want_write;
}

// EPOLLOUT is needed while a write or a read waits for the socket to take
// more bytes, and only then: it is level-triggered.
void update_events(int ep, Connection& c, size_t size) {
    set_events(ep, c, (c.sent < size && c.write_waits == Wait::Write) || c.read_waits == Wait::Write);
}

#ifdef LOADGEN_TLS
// > 0: bytes moved; 0: the peer closed; -1: nothing moved, `wait` says why.
ssize_t tls_result(SSL* ssl, int n, Wait& wait, const char* what) {
    if (n > 0) return n;
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ: wait = Wait::Read; return -1;
    case SSL_ERROR_WANT_WRITE: wait = Wait::Write; return -1;
    case SSL_ERROR_ZERO_RETURN: return 0;  // close_notify
    case SSL_ERROR_SYSCALL:
        if (errno == 0) return 0;  // EOF without close_notify
        die(what);
    default: die_tls(what);
    }
}
#endif

ssize_t write_some(Connection& c, const char* data, size_t len) {
#ifdef LOADGEN_TLS
    if (c.ssl) {
        ERR_clear_error();
        errno = 0;
        ssize_t n = tls_result(c.ssl, SSL_write(c.ssl, data, static_cast<int>(len)), c.write_waits, "SSL_write");
        if (n == 0) {
            std::fprintf(stderr, "loadgen: connection closed by the server\n");
            std::exit(1);
        }
        return n;
    }
#endif
    for (;;) {
        ssize_t n = send(c.fd, data, len, MSG_NOSIGNAL);
        if (n > 0) return n;
        if (n < 0 && errno == EAGAIN) {
            c.write_waits = Wait::Write;
            return -1;
        }
        if (n < 0 && errno == EINTR) continue;
        die("send");
    }
}

ssize_t read_some(Connection& c, char* buf, size_t len) {
#ifdef LOADGEN_TLS
    if (c.ssl) {
        ERR_clear_error();
        errno = 0;
        return tls_result(c.ssl, SSL_read(c.ssl, buf, static_cast<int>(len)), c.read_waits, "SSL_read");
    }
#endif
    for (;;) {
        ssize_t r = recv(c.fd, buf, len, 0);
        if (r >= 0) return r;
        if (errno == EAGAIN) {
            c.read_waits = Wait::Read;
            return -1;
        }
        if (errno != EINTR) die("recv");
    }
}

// Writes as much of the current message as the connection takes.
void pump_write(Connection& c, const std::vector<char>& msg) {
    while (c.sent < msg.size()) {
        ssize_t n = write_some(c, msg.data() + c.sent, msg.size() - c.sent);
        if (n < 0) break;
        c.sent += static_cast<size_t>(n);
    }
}

void start_request(int ep, Connection& c, const std::vector<char>& msg) {
    c.sent = 0;
    c.received = 0;
    c.started = Clock::now();
    pump_write(c, msg);
    update_events(ep, c, msg.size());
}

uint64_t percentile(const std::vector<uint64_t>& sorted, double p) {
    if (sorted.empty()) return 0;
    // Nearest-rank: the smallest sample with at least p% of samples <= it.
    auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    rank = std::clamp<size_t>(rank, 1, sorted.size());
    return sorted[rank - 1];
}

}  // namespace

int main(int argc, char** argv) {
    Options o = parse(argc, argv);
    std::vector<char> msg(o.size);
    for (size_t i = 0; i < msg.size(); ++i) msg[i] = static_cast<char>('a' + i % 26);
    std::vector<char> buf(std::max<size_t>(o.size, 64 * 1024));

    // A TLS write to a closed socket goes through write(), not send() with
    // MSG_NOSIGNAL; the error is reported, not a signal death.
    std::signal(SIGPIPE, SIG_IGN);
#ifdef LOADGEN_TLS
    SSL_CTX* tls_ctx = o.tls ? make_tls_context(o) : nullptr;
#endif
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    std::vector<Connection> conns(static_cast<size_t>(o.connections));
    for (auto& c : conns) {
        c.fd = connect_to(o);
#ifdef LOADGEN_TLS
        if (tls_ctx) c.ssl = tls_handshake(tls_ctx, c.fd);
#endif
        fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = &c;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) < 0) die("epoll_ctl");
    }

    // One sample per completed request inside the measured interval; a
    // vector (not a histogram) keeps percentiles exact, and at ~100k req/s
    // for 10 s it is a few MB.
    std::vector<uint64_t> latencies_ns;
    latencies_ns.reserve(1 << 20);
    uint64_t bytes = 0;

    auto t0 = Clock::now();
    auto measure_from = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup));
    auto measure_to = measure_from + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration));
    bool measuring = false;
    Clock::time_point measured_start;

    for (auto& c : conns) start_request(ep, c, msg);
    uint64_t lost = 0;  // --udp: requests sent again after a second without an answer
    auto next_scan = t0;

    std::vector<epoll_event> events(conns.size());
    for (;;) {
        auto now = Clock::now();
        if (!measuring && now >= measure_from) {
            measuring = true;
            measured_start = now;
            std::printf("MEASURE\n");
            std::fflush(stdout);
        }
        if (now >= measure_to) break;
        if (o.udp && now >= next_scan) {
            next_scan = now + std::chrono::milliseconds(100);
            for (auto& c : conns) {
                if (now - c.started < std::chrono::seconds(1)) continue;
                ++lost;
                start_request(ep, c, msg);
            }
        }
        // A short timeout so that the interval ends on time even when the
        // server has stopped answering.
        int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 10);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; ++i) {
            auto& c = *static_cast<Connection*>(events[i].data.ptr);
            bool readable = events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP);
            bool writable = events[i].events & EPOLLOUT;
            auto ready = [&](Wait w) { return w == Wait::Read ? readable : writable; };
            if (c.sent < o.size && ready(c.write_waits)) pump_write(c, msg);
            if (!ready(c.read_waits)) {
                update_events(ep, c, o.size);
                continue;
            }
            // Read what is there even while the message is still being
            // written: a server that echoes as it reads would otherwise fill
            // both socket buffers and the two sides would wait on each other.
            for (;;) {
                ssize_t r = read_some(c, buf.data(), buf.size());
                if (r < 0) break;
                if (r == 0) {
                    std::fprintf(stderr, "loadgen: connection closed by the server\n");
                    return 1;
                }
                c.received += static_cast<size_t>(r);
                if (c.received > c.sent) {
                    std::fprintf(stderr, "loadgen: server sent more than it was sent\n");
                    return 1;
                }
            }
            update_events(ep, c, o.size);
            if (c.received == o.size) {
                auto done = Clock::now();
                if (measuring && done <= measure_to) {
                    latencies_ns.push_back(static_cast<uint64_t>(
                        std::chrono::duration_cast<std::chrono::nanoseconds>(done - c.started).count()));
                    bytes += o.size;
                }
                start_request(ep, c, msg);
            }
        }
    }
    auto measured_end = Clock::now();
    std::printf("END\n");
    std::fflush(stdout);

    double seconds = std::chrono::duration<double>(measured_end - measured_start).count();
    std::sort(latencies_ns.begin(), latencies_ns.end());
    double mean_us = 0;
    for (auto v : latencies_ns) mean_us += static_cast<double>(v);
    if (!latencies_ns.empty()) mean_us /= static_cast<double>(latencies_ns.size()) * 1000.0;
    auto us = [](uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
    std::string tls_info;
#ifdef LOADGEN_TLS
    if (tls_ctx) {
        SSL* ssl = conns.front().ssl;
        tls_info = std::string(", \"tls\": {\"version\": \"") + SSL_get_version(ssl) + "\", \"cipher\": \"" +
                   SSL_get_cipher_name(ssl) + "\"}";
    }
#endif
    std::printf(
        "{\"requests\": %zu, \"bytes\": %" PRIu64 ", \"seconds\": %.6f, \"rps\": %.1f, "
        "\"connections\": %d, \"size\": %zu, "
        "\"latency_us\": {\"mean\": %.2f, \"p50\": %.2f, \"p99\": %.2f, \"p99.9\": %.2f, \"max\": %.2f}%s%s}\n",
        latencies_ns.size(), bytes, seconds, static_cast<double>(latencies_ns.size()) / seconds,
        o.connections, o.size, mean_us, us(percentile(latencies_ns, 50)), us(percentile(latencies_ns, 99)),
        us(percentile(latencies_ns, 99.9)), latencies_ns.empty() ? 0.0 : us(latencies_ns.back()),
        tls_info.c_str(), o.udp ? (", \"udp\": true, \"lost\": " + std::to_string(lost)).c_str() : "");
    for (auto& c : conns) {
#ifdef LOADGEN_TLS
        if (c.ssl) {
            SSL_shutdown(c.ssl);  // sends close_notify; the reply is not awaited
            SSL_free(c.ssl);
        }
#endif
        close(c.fd);
    }
#ifdef LOADGEN_TLS
    if (tls_ctx) SSL_CTX_free(tls_ctx);
#endif
    close(ep);
    return 0;
}
