// The io_uring backend: the loop's Ring, and Stream's operations on it.
#include <dlfcn.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <system_error>

#include "ring.hpp"
#include "shardloop/loop.hpp"
#include "shardloop/stream.hpp"

namespace shardloop {

namespace {

constexpr std::uint64_t kOpMask = 7;

[[noreturn]] void fail(int err, const char* what) { throw std::system_error(err, std::generic_category(), what); }

// Setup flags, best first. SINGLE_ISSUER|DEFER_TASKRUN: completions are
// produced only when this thread asks (in its one io_uring_enter an
// iteration), never by interrupting it. Older kernels take COOP_TASKRUN,
// and the oldest neither.
struct SetupChoice {
  unsigned flags;
  const char* name;
};
constexpr SetupChoice kSetups[] = {
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN"},
    {IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, "COOP_TASKRUN"},
    {0, "plain"},
};

// io_uring_queue_init_params with the best flags this kernel takes. Returns
// the choice's name; throws naming the cause (ENOSYS: no io_uring; EPERM:
// io_uring_disabled or a seccomp filter; ENOMEM: memlock limits).
// liburing 2.3 caches the page size in an unguarded static during setup
// (a data race under TSan when shards set up their rings together): ring
// setup is rare, so it is serialised.
std::mutex setup_mu;

const char* setup_ring(io_uring* ring, unsigned entries) {
  std::lock_guard<std::mutex> lock(setup_mu);
  int rc = -EINVAL;
  for (const SetupChoice& choice : kSetups) {
    io_uring_params p{};
    p.flags = choice.flags | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    rc = io_uring_queue_init_params(entries, ring, &p);
    if (rc == 0) return choice.name;
    if (rc != -EINVAL) break;
  }
  fail(-rc, "io_uring_setup");
}

void require_ops(io_uring* ring) {
  io_uring_probe* probe = io_uring_get_probe_ring(ring);
  if (probe == nullptr) fail(EOPNOTSUPP, "io_uring probe");
  const struct {
    int op;
    const char* name;
  } needed[] = {{IORING_OP_NOP, "io_uring opcode NOP"},
                {IORING_OP_RECV, "io_uring opcode RECV"},
                {IORING_OP_SEND, "io_uring opcode SEND"},
                {IORING_OP_CONNECT, "io_uring opcode CONNECT"},
                {IORING_OP_ASYNC_CANCEL, "io_uring opcode ASYNC_CANCEL"}};
  for (const auto& n : needed) {
    if (!io_uring_opcode_supported(probe, n.op)) {
      io_uring_free_probe(probe);
      fail(EOPNOTSUPP, n.name);
    }
  }
  io_uring_free_probe(probe);
}

}  // namespace

Ring::Ring(Loop& loop) : loop_(loop) {
  setup_name_ = setup_ring(&ring_, kEntries);
  try {
    require_ops(&ring_);
    const std::size_t ring_bytes = sizeof(io_uring_buf) * kBuffers;
    void* mem = ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) fail(errno, "mmap");
    br_ = static_cast<io_uring_buf_ring*>(mem);
    // The buffers' pages are touched only as the kernel fills them.
    mem = ::mmap(nullptr, std::size_t(kBuffers) * kBufferSize, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) fail(errno, "mmap");
    bufs_ = static_cast<char*>(mem);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uintptr_t>(br_);
    reg.ring_entries = kBuffers;
    reg.bgid = 0;
    int rc = io_uring_register_buf_ring(&ring_, &reg, 0);
    if (rc != 0) fail(-rc, "io_uring_register_buf_ring");
    io_uring_buf_ring_init(br_);
    post_buffers(kInitialBuffers);
    efd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) fail(errno, "eventfd");
    rc = io_uring_register_eventfd(&ring_, efd_);
    if (rc != 0) fail(-rc, "io_uring_register_eventfd");
    rc = uv_poll_init(loop.uv(), &poll_, efd_);
    if (rc != 0) fail(-rc, "uv_poll_init");
    poll_.data = this;
    uv_poll_start(&poll_, UV_READABLE, &Ring::on_event);
    // In-flight operations keep the loop busy through must_poll(); the
    // eventfd alone must not keep it alive.
    uv_unref(reinterpret_cast<uv_handle_t*>(&poll_));
  } catch (...) {
    release();
    throw;
  }
}

Ring::~Ring() { release(); }

void Ring::release() noexcept {
  if (!exited_) io_uring_queue_exit(&ring_);
  exited_ = true;
  if (efd_ >= 0) ::close(efd_);
  if (bufs_) ::munmap(bufs_, std::size_t(kBuffers) * kBufferSize);
  if (br_) ::munmap(br_, sizeof(io_uring_buf) * kBuffers);
  efd_ = -1;
  bufs_ = nullptr;
  br_ = nullptr;
}

// Once per process (what it finds does not change for the better:
// seccomp filters are only ever added), again in a fork child, which may
// have added one. Serialised: liburing's setup is not thread-safe.
void Ring::probe() {
  static std::mutex mu;
  static pid_t probed_in = 0;
  static std::exception_ptr verdict;
  std::lock_guard<std::mutex> lock(mu);
  if (probed_in != ::getpid()) {
    // Up to three tries: the round trip's plumbing (a socketpair write) can
    // fail for reasons that say nothing about io_uring (fault injection
    // makes it); a real refusal fails every time, and cheaply.
    for (int attempt = 0; attempt < 3; ++attempt) {
      verdict = nullptr;
      try {
        probe_once();
        break;
      } catch (const std::system_error&) {
        verdict = std::current_exception();
      }
    }
    probed_in = ::getpid();
  }
  if (verdict) std::rethrow_exception(verdict);
}

// A real round trip, not only the setup call: a multishot recv from a
// provided buffer on a socketpair. Catches what a setup alone does not
// (a kernel without multishot recv, a filter on io_uring_enter).
void Ring::probe_once() {
  io_uring ring{};
  setup_ring(&ring, 8);
  struct Cleanup {
    io_uring* ring;
    int fds[2] = {-1, -1};
    void* br = MAP_FAILED;
    ~Cleanup() {
      io_uring_queue_exit(ring);
      if (fds[0] >= 0) ::close(fds[0]);
      if (fds[1] >= 0) ::close(fds[1]);
      if (br != MAP_FAILED) ::munmap(br, 4096);
    }
  } c{&ring};
  require_ops(&ring);
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, c.fds) != 0) fail(errno, "socketpair");
  c.br = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (c.br == MAP_FAILED) fail(errno, "mmap");
  auto* br = static_cast<io_uring_buf_ring*>(c.br);
  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(br);
  reg.ring_entries = 1;
  int rc = io_uring_register_buf_ring(&ring, &reg, 0);
  if (rc != 0) fail(-rc, "io_uring_register_buf_ring");
  char byte = 0;
  io_uring_buf_ring_init(br);
  io_uring_buf_ring_add(br, &byte, 1, 0, io_uring_buf_ring_mask(1), 0);
  io_uring_buf_ring_advance(br, 1);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  io_uring_prep_recv_multishot(sqe, c.fds[0], nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = 0;
  // A signal (EINTR) or a socket that says "later" (EAGAIN) is no verdict
  // on io_uring: found by the fault-injection shim (tests/fault).
  for (int tries = 0;; ++tries) {
    ssize_t n = ::write(c.fds[1], "x", 1);
    if (n == 1) break;
    const int err = n < 0 ? errno : EIO;
    if (err == EINTR) continue;
    if ((err == EAGAIN || err == EWOULDBLOCK) && tries < 100) {
      pollfd p{c.fds[1], POLLOUT, 0};
      ::poll(&p, 1, 100);
      continue;
    }
    fail(err, "write");
  }
  do rc = io_uring_submit_and_wait(&ring, 1);
  while (rc == -EINTR);
  if (rc < 0) fail(-rc, "io_uring_enter");
  io_uring_cqe* cqe = nullptr;
  rc = io_uring_peek_cqe(&ring, &cqe);
  if (rc != 0) fail(-rc, "io_uring_enter");
  if (cqe->res < 0) fail(-cqe->res, "io_uring multishot recv");
  if (cqe->res != 1 || byte != 'x' || !(cqe->flags & IORING_CQE_F_MORE)) fail(EOPNOTSUPP, "io_uring multishot recv");
}

io_uring_sqe* Ring::sqe(std::uint64_t user_data) noexcept {
  if (orphaned_ || exited_) return &scratch_;
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  while (s == nullptr) {
    // Full: hand what is queued to the kernel. When it refuses because
    // completions are backed up (EBUSY), take those off the queue (they
    // are dispatched later, never from here) and try again.
    if (submit(false) < 0) harvest();
    s = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data64(s, user_data);
  ++live_;
  return s;
}

void Ring::submit_now() noexcept {
  if (!detached() && io_uring_sq_ready(&ring_) != 0 && submit(false) < 0) harvest();
}

void Ring::orphan() noexcept {
  orphaned_ = true;
  dirty_.clear();
  cqes_.clear();
  uv_poll_stop(&poll_);
}

void Ring::mark_dirty(Stream* stream) {
  if (stream->send_dirty || orphaned_ || exited_) return;
  dirty_.push_back(stream);
  stream->send_dirty = true;
}

// Buffers [posted_, posted_ + n) join the ring. The kernel takes them in
// the order they were added and each returns to the back, so every posted
// buffer is written once per lap: the pool is the ring's cache footprint.
void Ring::post_buffers(unsigned n) noexcept {
  for (unsigned i = 0; i < n; ++i) {
    const unsigned bid = posted_ + i;
    io_uring_buf_ring_add(br_, bufs_ + std::size_t(bid) * kBufferSize, kBufferSize, static_cast<unsigned short>(bid),
                          io_uring_buf_ring_mask(kBuffers), static_cast<int>(i));
  }
  io_uring_buf_ring_advance(br_, static_cast<int>(n));
  posted_ += n;
  loop_.io_stats().buffers = posted_;
}

void Ring::recycle(unsigned bid) noexcept {
  io_uring_buf_ring_add(br_, bufs_ + std::size_t(bid) * kBufferSize, kBufferSize, static_cast<unsigned short>(bid),
                        io_uring_buf_ring_mask(kBuffers), 0);
  io_uring_buf_ring_advance(br_, 1);
}

namespace {

// The fault-injection seam: io_uring_enter cannot be interposed (liburing
// makes the system call inline), so when tests/fault's shim is preloaded
// it answers for the enter first: 0, or a negative errno standing for the
// enter's result. Looked up once; absent in every other process.
using EnterFault = int (*)();
EnterFault enter_fault() noexcept {
  static const EnterFault hook = reinterpret_cast<EnterFault>(dlsym(RTLD_DEFAULT, "shardloop_fault_uring_enter"));
  return hook;
}

}  // namespace

int Ring::submit(bool wait) noexcept {
  int rc;
  do {
    ++enters_;
    ++loop_.io_stats().enters;
    if (EnterFault fault = enter_fault(); fault != nullptr && (rc = fault()) < 0) continue;
    rc = wait ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit_and_get_events(&ring_);
  } while (rc == -EINTR);
  return rc;
}

void Ring::harvest() noexcept {
  io_uring_cqe* cqe;
  unsigned head, n = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    try {
      cqes_.push_back(Completion{cqe->user_data, cqe->res, cqe->flags});
      ++loop_.io_stats().cqes;
      if ((cqe->user_data & kOpMask) == Stream::kRecv && cqe->res > 0) ++loop_.io_stats().recv_cqes;
    } catch (const std::bad_alloc&) {
      break;  // left in the ring for the next pass
    }
    ++n;
  }
  io_uring_cq_advance(&ring_, n);
}

// The kernel fills one provided buffer (16 KiB) per completion; a 100 KiB
// message would reach the owner in seven calls where a read(2) into the
// loop's 256 KiB buffer takes one. Consecutive data completions of one
// stream (up to that size) reach the owner as one delivery, in pieces that
// stay in the provided buffers: the owner copies them once, into its own
// object (copying them together here first cost a 100 KiB memcpy a
// request, from buffers that one enter had filled for many streams and
// that were no longer in cache: see docs/performance.md). The buffers go
// back once the owner has returned. Returns the index of the last
// completion used.
std::size_t Ring::gather(std::size_t first) noexcept {
  const Completion head = cqes_[first];
  auto* stream = reinterpret_cast<Stream*>(head.user_data & ~kOpMask);
  iovec parts[kMaxParts] = {};
  unsigned short bids[kMaxParts];
  int count = 0;
  std::size_t n = 0, i = first;
  unsigned flags = head.flags;
  for (; i < cqes_.size() && count < kMaxParts; ++i) {
    const Completion& c = cqes_[i];
    if (c.user_data != head.user_data || c.res <= 0 || !(c.flags & IORING_CQE_F_BUFFER) ||
        (count != 0 && n + static_cast<std::size_t>(c.res) > Loop::kReadBufferSize))
      break;
    const unsigned bid = c.flags >> IORING_CQE_BUFFER_SHIFT;
    bids[count] = static_cast<unsigned short>(bid);
    parts[count++] = iovec{const_cast<char*>(buffer(bid)), static_cast<std::size_t>(c.res)};
    n += static_cast<std::size_t>(c.res);
    flags = c.flags;
    if (!(c.flags & IORING_CQE_F_MORE)) {
      ++i;  // a multishot's last completion ends the run
      break;
    }
  }
  if (!(flags & IORING_CQE_F_MORE)) --live_;
  stream->on_completion(Stream::kRecv, static_cast<int>(n), flags & ~IORING_CQE_F_BUFFER, parts, count);
  for (int k = 0; k < count; ++k) recycle(bids[k]);
  return i - 1;
}

static_assert(Ring::kMaxParts * Ring::kBufferSize >= Loop::kReadBufferSize, "a delivery fills the read buffer");

bool Ring::dispatch() noexcept {
  bool any = false;
  // Callbacks may queue operations (and harvest more): index, not iterator.
  for (std::size_t i = 0; i < cqes_.size(); ++i) {
    const Completion c = cqes_[i];
    const auto op = static_cast<unsigned>(c.user_data & kOpMask);
    if (c.user_data == kIgnore) {
      --live_;
      continue;
    }
    if (op == kClient) {
      if (!(c.flags & IORING_CQE_F_MORE)) --live_;
      reinterpret_cast<RingClient*>(c.user_data & ~kOpMask)->on_ring_completion(c.res, c.flags);
      any = true;
      continue;
    }
    auto* stream = reinterpret_cast<Stream*>(c.user_data & ~kOpMask);
    if (op == Stream::kRecv && c.res > 0 && (c.flags & IORING_CQE_F_BUFFER)) {
      i = gather(i);  // data, with that of the stream's next completions
      any = true;
      continue;
    }
    if (op != Stream::kRecv || !(c.flags & IORING_CQE_F_MORE)) --live_;
    stream->on_completion(op, c.res, c.flags);
    any = true;
  }
  cqes_.clear();
  return any;
}

bool Ring::flush() noexcept {
  if (orphaned_ || exited_) return false;
  ++loop_.io_stats().flushes;
  // Streams closed since they were marked skip themselves; their memory
  // lives until their close completion, which comes after this.
  for (std::size_t i = 0; i < dirty_.size(); ++i) dirty_[i]->submit_send();
  dirty_.clear();
  // An enter the kernel refused (EBUSY: completions backed up; EAGAIN) is
  // retried by the next iteration's flush, which must then come without a
  // blocking poll in between: nothing else would wake the loop for it. Its
  // SQEs stay queued, and a wake-up it was to serve stays pending: with
  // DEFER_TASKRUN the completions the eventfd announced are only posted by
  // an enter, and the eventfd, already read, says nothing again (a hang
  // that fault injection found, TLS streams on io_uring).
  if ((io_uring_sq_ready(&ring_) != 0 || event_pending_) && submit(false) >= 0) event_pending_ = false;
  harvest();
  const bool retry = io_uring_sq_ready(&ring_) != 0 || event_pending_;
  const bool ran = dispatch();
  // More recvs went without a buffer in this pass than the pool holds:
  // re-arming them all again would cost more than the cache the bigger
  // pool spoils, so it doubles (their re-arms go with the next enter).
  if (starved_ > posted_ && posted_ < kBuffers) post_buffers(std::min(posted_, kBuffers - posted_));
  starved_ = 0;
  return ran || retry;
}

bool Ring::busy() const noexcept {
  return !orphaned_ && !exited_ && (live_ != 0 || !dirty_.empty() || event_pending_);
}

void Ring::on_event(uv_poll_t* handle, int, int) {
  auto* self = static_cast<Ring*>(handle->data);
  self->loop_.resume();
  std::uint64_t count;
  // Reset, or epoll reports it again; completions are fetched below.
  while (::read(self->efd_, &count, sizeof count) < 0 && errno == EINTR) {
  }
  self->event_pending_ = true;
  self->flush();
}

void Ring::drain() noexcept {
  dirty_.clear();
  if (orphaned_) return;
  if (exited_) {
    // abandon(): nothing will complete; each stream unlinks itself.
    while (streams_ != nullptr) streams_->abandon_ring();
    return;
  }
  // Every stream has closed and cancelled what it had in flight; each
  // cancellation completes promptly. A bound, in case one never does:
  // then those streams' memory is left, never touched.
  for (int round = 0; live_ != 0 && round < 100; ++round) {
    __kernel_timespec ts{0, 10 * 1000 * 1000};
    io_uring_cqe* cqe = nullptr;
    ++enters_;
    int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    if (rc < 0 && rc != -ETIME && rc != -EINTR) break;
    harvest();
    dispatch();
  }
}

void Ring::link(Stream* stream) noexcept {
  stream->ring_next = streams_;
  if (streams_) streams_->ring_prev = stream;
  streams_ = stream;
}

void Ring::unlink(Stream* stream) noexcept {
  if (stream->ring_prev) stream->ring_prev->ring_next = stream->ring_next;
  if (stream->ring_next) stream->ring_next->ring_prev = stream->ring_prev;
  if (streams_ == stream) streams_ = stream->ring_next;
  stream->ring_prev = stream->ring_next = nullptr;
}

void Ring::abandon() noexcept {
  // An orphaned ring (fork child) is the parent's: never touched.
  if (orphaned_ || exited_) return;
  dirty_.clear();
  cqes_.clear();
  // Closing the ring's fd cancels every request in it; none is issued
  // again (the submitter thread is not running the loop), so the streams'
  // buffers are no longer the kernel's.
  io_uring_queue_exit(&ring_);
  exited_ = true;
  live_ = 0;
}

// ---- Stream on the ring ---------------------------------------------------

void Stream::abandon_ring() noexcept {
  ring_->unlink(this);
  inflight_ = 0;
  recv_armed_ = send_inflight_ = false;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (closed()) handle_closed();  // may delete this
}

void Stream::on_completion(unsigned op, int res, unsigned flags, const iovec* parts, int count) noexcept {
  if (op != kRecv || !(flags & IORING_CQE_F_MORE)) --inflight_;
  switch (op) {
    case kRecv:
      uring_recv_done(res, flags, parts, count);
      break;
    case kSend:
      uring_send_done(res);
      break;
    case kShutdown:  // the NOP after uring_shutdown()'s shutdown(2)
      if (!closed()) finish_shutdown(shutdown_status_);
      break;
    case kResume:
      resume_queued_ = false;
      uring_deliver_held();
      break;
    default:  // kCancel, kClose: only counted
      break;
  }
  if (closed() && inflight_ == 0) {
    // Nothing of this stream is left in the kernel: the fd can go, and
    // with it (once released) the memory.
    ring_->unlink(this);
    ::close(fd_);
    fd_ = -1;
    handle_closed();  // may delete this
  }
}

void Stream::uring_arm_recv() noexcept {
  if (recv_armed_ || closed()) return;
  if (recv_ended_) ++loop_.io_stats().recv_rearms;
  recv_ended_ = false;
  io_uring_sqe* s = ring_->sqe(this, kRecv);
  io_uring_prep_recv_multishot(s, fd_, nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = 0;
  recv_armed_ = true;
  ++inflight_;
}

void Stream::uring_cancel_recv() noexcept {
  if (!recv_armed_) return;
  io_uring_prep_cancel64(ring_->sqe(this, kCancel), Ring::tag(this, kRecv), 0);
  ++inflight_;
}

void Stream::hold(const char* data, std::size_t len) noexcept {
  try {
    held_.append(data, len);
  } catch (const std::bad_alloc&) {
    held_status_ = UV_ENOBUFS;
  }
}

bool Stream::held() const noexcept { return !held_.empty() || held_status_ != 0 || resume_queued_; }

// `parts`: the data (`res` bytes in all), still in provided buffers that
// the ring takes back after this returns.
void Stream::uring_recv_done(int res, unsigned flags, const iovec* parts, int count) noexcept {
  const bool more = flags & IORING_CQE_F_MORE;
  if (!more) {
    recv_armed_ = false;
    recv_ended_ = res != -ECANCELED;  // the kernel ended it, not read_stop()
  }
  if (res == -ENOBUFS) {
    ++loop_.io_stats().recv_enobufs;
    ring_->starved();
  }
  if (res > 0 && parts != nullptr) {
    if (!closed()) {
      if (reading_ && !held()) {
        deliver_parts(parts, count, static_cast<std::size_t>(res));
      } else {
        // Arrived after read_stop(): kept for read_start(), in order.
        for (int k = 0; k < count; ++k) hold(static_cast<const char*>(parts[k].iov_base), parts[k].iov_len);
      }
    }
    // A multishot recv the kernel ended (it may, at any time) is re-armed.
    if (!more && !closed() && reading_ && !held()) uring_arm_recv();
    return;
  }
  if (closed()) return;
  if (res == -ENOBUFS || res == -ECANCELED) {
    // Out of provided buffers (they are back by now) or cancelled by a
    // read_stop() that a read_start() has since undone: re-arm.
    if (reading_ && !held()) uring_arm_recv();
    return;
  }
  const int status = res == 0 ? UV_EOF : res;
  if (reading_ && !held())
    deliver(nullptr, status);
  else
    held_status_ = status;
}

void Stream::uring_deliver_held() noexcept {
  if (closed() || !reading_) return;  // paused again first: kept
  if (!held_.empty()) {
    std::string data = std::move(held_);
    held_.clear();
    deliver(data.data(), static_cast<ssize_t>(data.size()));
    if (closed() || !reading_) return;
  }
  if (held_status_ != 0) {
    const int status = held_status_;
    held_status_ = 0;
    deliver(nullptr, status);
    return;
  }
  uring_arm_recv();
}

void Stream::submit_send() noexcept {
  send_dirty = false;
  if (closed() || send_inflight_ || write_failed_) return;
  if (sent_ == sending_.size()) {
    // The buffer in the kernel's hands stays put until its completion;
    // later writes collect in out_ and leave together as the next send.
    sending_.swap(out_);
    out_.clear();
    sent_ = 0;
  }
  if (sent_ == sending_.size()) return;
  io_uring_sqe* s = ring_->sqe(this, kSend);
  io_uring_prep_send(s, fd_, sending_.data() + sent_, sending_.size() - sent_, MSG_NOSIGNAL);
  ++loop_.io_stats().send_sqes;
  send_inflight_ = true;
  ++inflight_;
}

void Stream::uring_send_done(int res) noexcept {
  send_inflight_ = false;
  if (closed()) return;  // its buffer may go now
  if (res < 0) {
    report_write(res);
    return;
  }
  sent_ += static_cast<std::size_t>(res);
  if (sent_ < sending_.size()) {
    ++loop_.io_stats().short_sends;
    submit_send();  // a short send: the rest, in order, before anything newer
    return;
  }
  sending_.clear();
  sent_ = 0;
  if (!out_.empty()) submit_send();
  report_write(0);
  if (!closed() && queued() == 0 && shutdown_pending_ && !send_inflight_) uring_shutdown();
}

// After the last queued send: shutdown(2) of a socket never blocks, while
// IORING_OP_SHUTDOWN always goes to an io-wq worker (the FIN left 1-16 ms
// late, after events the peer sent later had been delivered: found by
// tests/python/test_differential.py). So the call is made here; a NOP
// carries its result, so on_shutdown comes from a completion.
void Stream::uring_shutdown() noexcept {
  shutdown_status_ = ::shutdown(fd_, SHUT_WR) == 0 ? 0 : -errno;
  shutdown_sent_ = true;
  ring_->nop(this, kShutdown);
  ++inflight_;
}

// close(): whatever is in the kernel is cancelled; the fd is closed, and
// the stream freed, once the last completion is in (on_completion).
void Stream::uring_close() noexcept {
  if (recv_armed_) uring_cancel_recv();
  if (send_inflight_) {
    io_uring_prep_cancel64(ring_->sqe(this, kCancel), Ring::tag(this, kSend), 0);
    ++inflight_;
  }
  out_.clear();
  held_.clear();
  ring_->nop(this, kClose);
  ++inflight_;
}

}  // namespace shardloop
