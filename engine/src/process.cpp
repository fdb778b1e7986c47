#include "shardloop/process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>

extern char** environ;

namespace shardloop {
namespace {

// What a failed child leaves behind. It lives in the parent's frame, which
// the vfork() child shares, and is read only once the parent runs again.
struct ChildReport {
  int error;
  SpawnStage stage;
};

// Everything the child needs, laid out before vfork(): the child runs on
// the parent's memory and must not allocate (another thread may hold the
// allocator's lock) or touch anything but its own descriptors and signals.
struct Prepared {
  const SpawnRequest* request;
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<const char*> paths;
  const char* cwd;
  int max_fd;  // the descriptors to close one by one when close_range() is missing
  sigset_t old_mask;
};

[[noreturn]] void child_fail(volatile ChildReport* report, SpawnStage stage, int error) {
  report->error = error != 0 ? error : EINVAL;
  report->stage = stage;
  _exit(255);
}

int make_inheritable(int fd) {
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return -1;
  if ((flags & FD_CLOEXEC) == 0) return 0;
  return fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
}

// Closes [low, high]; close_range() needs Linux 5.9, so older kernels get
// one close() per descriptor up to the limit.
void close_span(int low, int high, int max_fd) {
  if (low > high) return;
#ifdef SYS_close_range
  if (syscall(SYS_close_range, static_cast<unsigned>(low), static_cast<unsigned>(high), 0u) == 0) return;
#endif
  int last = high < max_fd ? high : max_fd - 1;
  for (int fd = low; fd <= last; ++fd) close(fd);
}

// Every descriptor from 3 up except the (sorted) ones to keep.
void close_all_but(const std::vector<int>& keep, int max_fd) {
  int low = 3;
  for (int fd : keep) {
    if (fd < low) continue;
    close_span(low, fd - 1, max_fd);
    low = fd + 1;
  }
  close_span(low, INT_MAX, max_fd);
}

// Puts `source` at `target` (0, 1 or 2). dup2() leaves the copy inheritable;
// a descriptor that already is the target only loses close-on-exec.
int place(int source, int target) {
  if (source < 0) return 0;
  if (source == target) return make_inheritable(target);
  return dup2(source, target) < 0 ? -1 : 0;
}

[[noreturn]] __attribute__((noinline)) void child_main(const Prepared& p, volatile ChildReport* report) {
  const SpawnRequest& r = *p.request;

  // The parent's handlers would run on the parent's memory: back to the
  // default, except what is ignored (an ignored signal stays ignored over
  // exec, as in Popen), and SIGPIPE/SIGXFSZ, which Python ignores for itself.
  for (int sig = 1; sig < NSIG; ++sig) {
    struct sigaction current;
    if (sigaction(sig, nullptr, &current) != 0 || current.sa_handler == SIG_DFL) continue;
    bool restore = r.restore_signals && (sig == SIGPIPE || sig == SIGXFSZ);
    if (current.sa_handler == SIG_IGN && !restore) continue;
    struct sigaction fallback = {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(sig, &fallback, nullptr);
  }
  // The mask the caller had: signals were blocked only around vfork().
  int err = pthread_sigmask(SIG_SETMASK, &p.old_mask, nullptr);
  if (err != 0) child_fail(report, SpawnStage::setup, err);

  for (int fd : r.keep_fds) {
    if (make_inheritable(fd) < 0) child_fail(report, SpawnStage::setup, errno);
  }
  for (int fd : r.parent_ends) {
    if (fd >= 0 && close(fd) < 0) child_fail(report, SpawnStage::setup, errno);
  }

  // Descriptors that an earlier dup2() would overwrite move out of 0-2 first.
  int in = r.stdio[0], out = r.stdio[1], err_out = r.stdio[2];
  if (out == 0) {
    out = fcntl(out, F_DUPFD_CLOEXEC, 3);
    if (out < 0) child_fail(report, SpawnStage::setup, errno);
  }
  if (err_out == 0 || err_out == 1) {
    err_out = fcntl(err_out, F_DUPFD_CLOEXEC, 3);
    if (err_out < 0) child_fail(report, SpawnStage::setup, errno);
  }
  if (place(in, 0) < 0 || place(out, 1) < 0 || place(err_out, 2) < 0) {
    child_fail(report, SpawnStage::setup, errno);
  }

  if (p.cwd != nullptr && chdir(p.cwd) < 0) child_fail(report, SpawnStage::chdir, errno);
  if (r.umask >= 0) umask(static_cast<mode_t>(r.umask));
  if (r.new_session && setsid() < 0) child_fail(report, SpawnStage::setup, errno);
  if (r.process_group >= 0 && setpgid(0, r.process_group) < 0) child_fail(report, SpawnStage::setup, errno);
  // Raw system calls, in _posixsubprocess's order (see process.hpp).
  if (r.groups && syscall(SYS_setgroups, r.groups->size(), r.groups->empty() ? nullptr : r.groups->data()) < 0) {
    child_fail(report, SpawnStage::setup, errno);
  }
  if (r.gid && syscall(SYS_setregid, *r.gid, *r.gid) < 0) child_fail(report, SpawnStage::setup, errno);
  if (r.uid && syscall(SYS_setreuid, *r.uid, *r.uid) < 0) child_fail(report, SpawnStage::setup, errno);
  if (r.close_fds) close_all_but(r.keep_fds, p.max_fd);

  // As os._execvpe: the first error other than "not there" is the one
  // reported (a program found but not executable says so).
  int first = 0;
  int last = ENOENT;
  for (const char* path : p.paths) {
    execve(path, p.argv.data(), p.envp.data());
    last = errno;
    if (first == 0 && last != ENOENT && last != ENOTDIR) first = last;
  }
  child_fail(report, SpawnStage::exec, first != 0 ? first : last);
}

int descriptor_limit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < INT_MAX) {
    return static_cast<int>(limit.rlim_cur);
  }
  long open_max = sysconf(_SC_OPEN_MAX);
  return open_max > 0 && open_max < INT_MAX ? static_cast<int>(open_max) : 1 << 20;
}

}  // namespace

SpawnResult spawn_process(const SpawnRequest& request) {
  std::vector<std::string> env_copy;
  if (!request.env) {
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) env_copy.emplace_back(*entry);
  }
  const std::vector<std::string>& env = request.env ? *request.env : env_copy;

  Prepared p;
  p.request = &request;
  for (const std::string& arg : request.argv) p.argv.push_back(const_cast<char*>(arg.c_str()));
  p.argv.push_back(nullptr);
  for (const std::string& entry : env) p.envp.push_back(const_cast<char*>(entry.c_str()));
  p.envp.push_back(nullptr);
  for (const std::string& path : request.exec_paths) p.paths.push_back(path.c_str());
  p.cwd = request.cwd ? request.cwd->c_str() : nullptr;
  p.max_fd = request.close_fds ? descriptor_limit() : 0;

  // No signal handler may run in the child before it has reset them all.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &p.old_mask);

  // volatile: the child writes it behind the compiler's back.
  volatile ChildReport report = {0, SpawnStage::none};
  pid_t pid = vfork();
  if (pid == 0) child_main(p, &report);
  int fork_error = errno;
  pthread_sigmask(SIG_SETMASK, &p.old_mask, nullptr);

  SpawnResult result;
  if (pid < 0) {
    result.error = fork_error;
    result.stage = SpawnStage::fork;
    return result;
  }
  result.pid = pid;
  if (report.stage != SpawnStage::none) {
    result.error = report.error;
    result.stage = report.stage;
    // The child has called _exit(): this returns as soon as it is a zombie.
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.wait_status = status;
  }
  return result;
}

}  // namespace shardloop
