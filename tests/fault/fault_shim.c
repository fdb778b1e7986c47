/* Fault injection for the tests: an LD_PRELOAD shim that makes socket and
 * pipe syscalls fail at random, reproducibly from a seed.
 *
 * Intercepted: read, write, readv, writev, recv, recvfrom, recvmsg, recvmmsg,
 * send, sendto, sendmsg, sendmmsg, accept, accept4, connect, epoll_wait,
 * epoll_pwait.
 * Not intercepted: io_uring_enter. liburing 2.3 (Debian) is built without
 * libc: it issues the syscall instruction inline and imports no `syscall`
 * symbol, so no preloaded library can see it (nor the ring's completions).
 *
 * Only sockets and pipes are touched (fstat: S_ISSOCK / S_ISFIFO), never
 * fds 0-2, never after fork (a forked child, libuv's spawn included, runs
 * clean), and never during the first SHARDLOOP_FAULT_SKIP calls.
 *
 * Every fault is one a real kernel may produce for that call on that fd:
 *   - EINTR on any call but a non-blocking connect (which gets
 *     EINPROGRESS instead, see connect below);
 *   - EAGAIN only where the fd is non-blocking (or MSG_DONTWAIT), never
 *     from connect;
 *   - short counts only on byte streams (stream sockets, pipes), made by
 *     asking the kernel for less, so nothing is lost; never on a pipe write
 *     of up to PIPE_BUF bytes (POSIX makes those atomic) nor on datagrams;
 *     epoll's "short count" is a smaller maxevents;
 *   - hard errors only with SHARDLOOP_FAULT_HARD=1, at a tenth of the rate,
 *     only on non-blocking fds (or MSG_DONTWAIT), each where the man page
 *     allows it: ECONNRESET (socket reads and
 *     sends), EPIPE (stream sends, pipe writes), ENOMEM (recv*, send*,
 *     accept), EMFILE (accept).
 *
 * Environment: SHARDLOOP_FAULT_SEED (default 1), SHARDLOOP_FAULT_RATE
 * (probability per eligible call, default 0.05), SHARDLOOP_FAULT_HARD,
 * SHARDLOOP_FAULT_SKIP, SHARDLOOP_FAULT_VERBOSE=1 (a summary on stderr at
 * exit). Each thread draws from its own generator, seeded from the seed and
 * the thread's index (in order of first intercepted call), so one seed gives
 * one sequence of decisions per thread; which call meets which decision
 * still depends on how the kernel schedules the I/O.
 *
 * Queried from the process under test (ctypes): shardloop_fault_count(),
 * shardloop_fault_count_of(call), shardloop_fault_set_enabled(int).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum call {
  C_READ, C_WRITE, C_READV, C_WRITEV, C_RECV, C_RECVFROM, C_RECVMSG, C_SEND, C_SENDTO, C_SENDMSG,
  C_RECVMMSG, C_SENDMMSG, C_ACCEPT, C_ACCEPT4, C_CONNECT, C_EPOLL_WAIT, C_EPOLL_PWAIT, C_IO_URING_ENTER, C_COUNT
};
static const char* const call_names[C_COUNT] = {
  "read", "write", "readv", "writev", "recv", "recvfrom", "recvmsg", "send", "sendto", "sendmsg",
  "recvmmsg", "sendmmsg", "accept", "accept4", "connect", "epoll_wait", "epoll_pwait", "io_uring_enter"};

static uint64_t g_seed = 1;
static double g_rate = 0.05;
static int g_hard = 0;
static long g_skip = 0;
static int g_verbose = 0;
static atomic_int g_enabled = 1;
static atomic_int g_forked = 0;
static atomic_long g_calls = 0;
static atomic_long g_faults = 0;
static atomic_long g_faults_of[C_COUNT];
static atomic_uint g_next_thread = 0;

static __thread int t_ready;
static __thread uint64_t t_state;
static __thread int t_inside;  /* our own calls (fstat, fcntl) are not faulted */

static ssize_t (*real_read)(int, void*, size_t);
static ssize_t (*real_write)(int, const void*, size_t);
static ssize_t (*real_readv)(int, const struct iovec*, int);
static ssize_t (*real_writev)(int, const struct iovec*, int);
static ssize_t (*real_recv)(int, void*, size_t, int);
static ssize_t (*real_recvfrom)(int, void*, size_t, int, struct sockaddr*, socklen_t*);
static ssize_t (*real_recvmsg)(int, struct msghdr*, int);
static ssize_t (*real_send)(int, const void*, size_t, int);
static ssize_t (*real_sendto)(int, const void*, size_t, int, const struct sockaddr*, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr*, int);
static int (*real_recvmmsg)(int, struct mmsghdr*, unsigned int, int, struct timespec*);
static int (*real_sendmmsg)(int, struct mmsghdr*, unsigned int, int);
static int (*real_accept)(int, struct sockaddr*, socklen_t*);
static int (*real_accept4)(int, struct sockaddr*, socklen_t*, int);
static int (*real_connect)(int, const struct sockaddr*, socklen_t);
static int (*real_epoll_wait)(int, struct epoll_event*, int, int);
static int (*real_epoll_pwait)(int, struct epoll_event*, int, int, const sigset_t*);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

static void after_fork_child(void) { atomic_store(&g_forked, 1); }

static void report(void) {
  if (!g_verbose) return;
  fprintf(stderr, "fault_shim: seed=%llu rate=%g hard=%d calls=%ld faults=%ld",
          (unsigned long long)g_seed, g_rate, g_hard, atomic_load(&g_calls), atomic_load(&g_faults));
  for (int i = 0; i < C_COUNT; ++i) {
    long n = atomic_load(&g_faults_of[i]);
    if (n) fprintf(stderr, " %s=%ld", call_names[i], n);
  }
  fputc('\n', stderr);
}

__attribute__((constructor)) static void init(void) {
  RESOLVE(read); RESOLVE(write); RESOLVE(readv); RESOLVE(writev);
  RESOLVE(recv); RESOLVE(recvfrom); RESOLVE(recvmsg);
  RESOLVE(send); RESOLVE(sendto); RESOLVE(sendmsg);
  RESOLVE(recvmmsg); RESOLVE(sendmmsg);
  RESOLVE(accept); RESOLVE(accept4); RESOLVE(connect);
  RESOLVE(epoll_wait); RESOLVE(epoll_pwait);
  const char* s;
  if ((s = getenv("SHARDLOOP_FAULT_SEED"))) g_seed = strtoull(s, NULL, 0);
  if ((s = getenv("SHARDLOOP_FAULT_RATE"))) g_rate = strtod(s, NULL);
  if ((s = getenv("SHARDLOOP_FAULT_HARD"))) g_hard = atoi(s);
  if ((s = getenv("SHARDLOOP_FAULT_SKIP"))) g_skip = strtol(s, NULL, 0);
  if ((s = getenv("SHARDLOOP_FAULT_VERBOSE"))) g_verbose = atoi(s);
  pthread_atfork(NULL, NULL, after_fork_child);
  atexit(report);
}

/* splitmix64: small, and good enough to spread faults. */
static uint64_t next_random(void) {
  if (!t_ready) {
    unsigned idx = atomic_fetch_add(&g_next_thread, 1);
    t_state = g_seed * 0x9E3779B97F4A7C15ull + idx + 1;
    t_ready = 1;
  }
  uint64_t z = (t_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static double uniform(void) { return (double)(next_random() >> 11) * 0x1.0p-53; }

/* What the fd is, as far as faults go. */
struct fdinfo {
  int eligible;   /* a socket or a pipe, not stdio */
  int sock;       /* a socket (else a pipe) */
  int stream;     /* bytes, not datagrams: stream socket or pipe */
  int nonblock;
};

static struct fdinfo classify(int fd) {
  struct fdinfo fi = {0, 0, 0, 0};
  if (fd < 3 || atomic_load(&g_forked) || !atomic_load(&g_enabled) || t_inside) return fi;
  t_inside = 1;
  struct stat st;
  if (fstat(fd, &st) == 0 && (S_ISSOCK(st.st_mode) || S_ISFIFO(st.st_mode))) {
    fi.eligible = 1;
    fi.sock = S_ISSOCK(st.st_mode);
    fi.stream = 1;
    if (fi.sock) {
      int type = 0;
      socklen_t len = sizeof type;
      if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) fi.stream = 0;
    }
    int fl = fcntl(fd, F_GETFL);
    fi.nonblock = fl >= 0 && (fl & O_NONBLOCK);
  }
  t_inside = 0;
  return fi;
}

enum fault { F_NONE, F_ERROR, F_SHORT };

/* Decides for one call: F_NONE, F_SHORT (then *limit is the count to ask
 * the kernel for) or F_ERROR (then errno is set). `hard` lists the hard
 * errors legal for this call, zero-terminated. */
static enum fault decide(enum call c, const struct fdinfo* fi, int dontwait, size_t len, int is_write,
                         const int* hard, size_t* limit) {
  if (!fi->eligible) return F_NONE;
  if (atomic_fetch_add(&g_calls, 1) < g_skip) return F_NONE;
  if (uniform() >= g_rate) return F_NONE;
  int can_short = fi->stream && len > 1 && !(is_write && !fi->sock && len <= PIPE_BUF);
  int can_again = fi->nonblock || dontwait;
  int options[8], n = 0;
  options[n++] = EINTR;
  if (can_again) options[n++] = EAGAIN;
  if (can_short) options[n++] = 0;
  int pick;
  /* Hard errors only where the engine does its I/O: non-blocking fds. A
   * blocking pipe here is libuv's own signal-lock pipe, whose reader never
   * closes, so EPIPE is impossible there; libuv aborts on it (uv_loop_init,
   * seeds 5012, 5058, 5059, 5062 and 5063 of `make fault-soak`). */
  if (g_hard && hard && hard[0] && can_again && uniform() < 0.1) {
    int k = 0;
    while (hard[k]) ++k;
    pick = hard[next_random() % (uint64_t)k];
    if (pick == ECONNRESET && !fi->sock) pick = EPIPE;
    if (pick == ECONNRESET && !fi->stream) pick = ECONNREFUSED;  /* connected UDP: ICMP */
    if (pick == EPIPE && (!is_write || !fi->stream)) pick = EINTR;
  } else {
    pick = options[next_random() % (uint64_t)n];
  }
  atomic_fetch_add(&g_faults, 1);
  atomic_fetch_add(&g_faults_of[c], 1);
  if (pick == 0) {
    *limit = 1 + (size_t)(next_random() % (uint64_t)(len - 1));
    return F_SHORT;
  }
  errno = pick;
  return F_ERROR;
}

static const int hard_read[] = {ECONNRESET, 0};
static const int hard_recv[] = {ECONNRESET, ENOMEM, 0};
static const int hard_write[] = {EPIPE, ECONNRESET, 0};
static const int hard_send[] = {EPIPE, ECONNRESET, ENOMEM, 0};
static const int hard_accept[] = {EMFILE, ENOMEM, 0};

static size_t iov_total(const struct iovec* iov, int n) {
  size_t t = 0;
  for (int i = 0; i < n; ++i) t += iov[i].iov_len;
  return t;
}

/* Copies iov into out, cut to `limit` bytes; returns the new count. */
static int iov_cut(const struct iovec* iov, int n, size_t limit, struct iovec* out, int max) {
  int k = 0;
  for (int i = 0; i < n && k < max && limit > 0; ++i) {
    out[k] = iov[i];
    if (out[k].iov_len > limit) out[k].iov_len = limit;
    limit -= out[k].iov_len;
    ++k;
  }
  return k;
}

#define MAX_IOV 64

ssize_t read(int fd, void* buf, size_t len) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_READ, &fi, 0, len, 0, fi.sock ? hard_read : NULL, &lim);
  if (f == F_ERROR) return -1;
  return real_read(fd, buf, lim);
}

ssize_t write(int fd, const void* buf, size_t len) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_WRITE, &fi, 0, len, 1, hard_write, &lim);
  if (f == F_ERROR) return -1;
  return real_write(fd, buf, lim);
}

ssize_t readv(int fd, const struct iovec* iov, int n) {
  struct fdinfo fi = classify(fd);
  size_t total = iov_total(iov, n), lim = total;
  enum fault f = decide(C_READV, &fi, 0, n <= MAX_IOV ? total : 0, 0, fi.sock ? hard_read : NULL, &lim);
  if (f == F_ERROR) return -1;
  if (f == F_SHORT) {
    struct iovec cut[MAX_IOV];
    return real_readv(fd, cut, iov_cut(iov, n, lim, cut, MAX_IOV));
  }
  return real_readv(fd, iov, n);
}

ssize_t writev(int fd, const struct iovec* iov, int n) {
  struct fdinfo fi = classify(fd);
  size_t total = iov_total(iov, n), lim = total;
  enum fault f = decide(C_WRITEV, &fi, 0, n <= MAX_IOV ? total : 0, 1, hard_write, &lim);
  if (f == F_ERROR) return -1;
  if (f == F_SHORT) {
    struct iovec cut[MAX_IOV];
    return real_writev(fd, cut, iov_cut(iov, n, lim, cut, MAX_IOV));
  }
  return real_writev(fd, iov, n);
}

ssize_t recv(int fd, void* buf, size_t len, int flags) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_RECV, &fi, flags & MSG_DONTWAIT, len, 0, hard_recv, &lim);
  if (f == F_ERROR) return -1;
  return real_recv(fd, buf, lim, flags);
}

ssize_t recvfrom(int fd, void* buf, size_t len, int flags, struct sockaddr* addr, socklen_t* alen) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_RECVFROM, &fi, flags & MSG_DONTWAIT, len, 0, hard_recv, &lim);
  if (f == F_ERROR) return -1;
  return real_recvfrom(fd, buf, lim, flags, addr, alen);
}

ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
  struct fdinfo fi = classify(fd);
  size_t total = iov_total(msg->msg_iov, (int)msg->msg_iovlen), lim = total;
  /* No short count when ancillary data comes along (fds passed over a
   * Unix socket travel with the first byte). */
  size_t shortable = msg->msg_controllen == 0 && msg->msg_iovlen <= MAX_IOV ? total : 0;
  enum fault f = decide(C_RECVMSG, &fi, flags & MSG_DONTWAIT, shortable, 0, hard_recv, &lim);
  if (f == F_ERROR) return -1;
  if (f == F_SHORT) {
    struct iovec cut[MAX_IOV];
    struct iovec* orig = msg->msg_iov;
    size_t orig_n = msg->msg_iovlen;
    msg->msg_iov = cut;
    msg->msg_iovlen = (size_t)iov_cut(orig, (int)orig_n, lim, cut, MAX_IOV);
    ssize_t r = real_recvmsg(fd, msg, flags);
    int saved = errno;
    msg->msg_iov = orig;
    msg->msg_iovlen = orig_n;
    errno = saved;
    return r;
  }
  return real_recvmsg(fd, msg, flags);
}

ssize_t send(int fd, const void* buf, size_t len, int flags) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_SEND, &fi, flags & MSG_DONTWAIT, len, 1, hard_send, &lim);
  if (f == F_ERROR) return -1;
  return real_send(fd, buf, lim, flags);
}

ssize_t sendto(int fd, const void* buf, size_t len, int flags, const struct sockaddr* addr, socklen_t alen) {
  struct fdinfo fi = classify(fd);
  size_t lim = len;
  enum fault f = decide(C_SENDTO, &fi, flags & MSG_DONTWAIT, len, 1, hard_send, &lim);
  if (f == F_ERROR) return -1;
  return real_sendto(fd, buf, lim, flags, addr, alen);
}

ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  struct fdinfo fi = classify(fd);
  size_t total = iov_total(msg->msg_iov, (int)msg->msg_iovlen), lim = total;
  size_t shortable = msg->msg_controllen == 0 && msg->msg_iovlen <= MAX_IOV ? total : 0;
  enum fault f = decide(C_SENDMSG, &fi, flags & MSG_DONTWAIT, shortable, 1, hard_send, &lim);
  if (f == F_ERROR) return -1;
  if (f == F_SHORT) {
    struct iovec cut[MAX_IOV];
    struct msghdr m = *msg;
    m.msg_iov = cut;
    m.msg_iovlen = (size_t)iov_cut(msg->msg_iov, (int)msg->msg_iovlen, lim, cut, MAX_IOV);
    return real_sendmsg(fd, &m, flags);
  }
  return real_sendmsg(fd, msg, flags);
}

/* The batch calls (the engine's Datagram) fail as a whole: they carry
 * datagrams, which are never cut. */
int recvmmsg(int fd, struct mmsghdr* msgs, unsigned int n, int flags, struct timespec* timeout) {
  struct fdinfo fi = classify(fd);
  size_t lim = 0;
  if (decide(C_RECVMMSG, &fi, flags & MSG_DONTWAIT, 0, 0, hard_recv, &lim) == F_ERROR) return -1;
  return real_recvmmsg(fd, msgs, n, flags, timeout);
}

int sendmmsg(int fd, struct mmsghdr* msgs, unsigned int n, int flags) {
  struct fdinfo fi = classify(fd);
  size_t lim = 0;
  if (decide(C_SENDMMSG, &fi, flags & MSG_DONTWAIT, 0, 1, hard_send, &lim) == F_ERROR) return -1;
  return real_sendmmsg(fd, msgs, n, flags);
}

int accept4(int fd, struct sockaddr* addr, socklen_t* alen, int flags) {
  struct fdinfo fi = classify(fd);
  size_t lim = 0;
  if (decide(C_ACCEPT4, &fi, 0, 0, 0, hard_accept, &lim) == F_ERROR) return -1;
  return real_accept4(fd, addr, alen, flags);
}

int accept(int fd, struct sockaddr* addr, socklen_t* alen) {
  struct fdinfo fi = classify(fd);
  size_t lim = 0;
  if (decide(C_ACCEPT, &fi, 0, 0, 0, hard_accept, &lim) == F_ERROR) return -1;
  return real_accept(fd, addr, alen);
}

/* connect: the real call is made first. A non-blocking connect that
 * completed at once is reported as EINPROGRESS (the kernel may finish a
 * connection later; the caller waits for writability and reads SO_ERROR,
 * 0). A blocking one that completed is reported as EINTR, which leaves a
 * real connection going on in the background. Nothing else: EINTR is not
 * something a non-blocking connect returns (it never sleeps), and libuv
 * retries an EINTR with a second connect that then fails with EALREADY. */
int connect(int fd, const struct sockaddr* addr, socklen_t alen) {
  struct fdinfo fi = classify(fd);
  int rc = real_connect(fd, addr, alen);
  if (!fi.eligible || !fi.stream || rc != 0) return rc;
  if (atomic_fetch_add(&g_calls, 1) < g_skip || uniform() >= g_rate) return rc;
  atomic_fetch_add(&g_faults, 1);
  atomic_fetch_add(&g_faults_of[C_CONNECT], 1);
  errno = fi.nonblock ? EINPROGRESS : EINTR;
  return -1;
}

/* epoll: EINTR, or fewer events than are ready (a smaller maxevents; the
 * rest stay ready for the next call, the level-triggered ones at least). */
static enum fault decide_epoll(enum call c, int* maxevents) {
  if (atomic_load(&g_forked) || !atomic_load(&g_enabled) || *maxevents < 1) return F_NONE;
  if (atomic_fetch_add(&g_calls, 1) < g_skip || uniform() >= g_rate) return F_NONE;
  atomic_fetch_add(&g_faults, 1);
  atomic_fetch_add(&g_faults_of[c], 1);
  if (*maxevents > 1 && (next_random() & 1)) {
    *maxevents = 1 + (int)(next_random() % (uint64_t)(*maxevents - 1));
    return F_SHORT;
  }
  errno = EINTR;
  return F_ERROR;
}

int epoll_wait(int epfd, struct epoll_event* events, int maxevents, int timeout) {
  if (decide_epoll(C_EPOLL_WAIT, &maxevents) == F_ERROR) return -1;
  return real_epoll_wait(epfd, events, maxevents, timeout);
}

int epoll_pwait(int epfd, struct epoll_event* events, int maxevents, int timeout, const sigset_t* mask) {
  if (decide_epoll(C_EPOLL_PWAIT, &maxevents) == F_ERROR) return -1;
  return real_epoll_pwait(epfd, events, maxevents, timeout, mask);
}

/* io_uring_enter cannot be interposed (liburing makes the system call
 * inline), so the engine's ring asks this seam before each enter when the
 * shim is loaded (Ring::submit looks it up with dlsym): 0 lets the enter
 * happen, a negative errno stands for its result. EINTR (a signal), EBUSY
 * (completions backed up) and EAGAIN (no memory for the request) are what
 * io_uring_enter(2) lists for a submission that took nothing. */
int shardloop_fault_uring_enter(void) {
  if (atomic_load(&g_forked) || !atomic_load(&g_enabled)) return 0;
  if (atomic_fetch_add(&g_calls, 1) < g_skip || uniform() >= g_rate) return 0;
  atomic_fetch_add(&g_faults, 1);
  atomic_fetch_add(&g_faults_of[C_IO_URING_ENTER], 1);
  static const int errors[] = {EINTR, EBUSY, EAGAIN};
  return -errors[next_random() % 3];
}

/* For the process under test (ctypes). */
long shardloop_fault_count(void) { return atomic_load(&g_faults); }

long shardloop_fault_count_of(const char* name) {
  for (int i = 0; i < C_COUNT; ++i)
    if (strcmp(name, call_names[i]) == 0) return atomic_load(&g_faults_of[i]);
  return -1;
}

void shardloop_fault_set_enabled(int on) { atomic_store(&g_enabled, on != 0); }
