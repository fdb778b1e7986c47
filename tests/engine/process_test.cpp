// spawn_process() (process.hpp): real children through vfork() and
// execve(): exit status, argv/env/cwd, stdio pipes, each failing step
// reported with its errno (and the child reaped), descriptors closed or
// kept, session/group/umask, signal dispositions and mask, and that the
// call returns once the child has exec'd, not when it ends.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shardloop/loop.hpp"
#include "shardloop/process.hpp"
#include "stream_support.hpp"

namespace {

using shardloop::SpawnRequest;
using shardloop::SpawnResult;
using shardloop::SpawnStage;

SpawnRequest sh(const std::string& script) {
  SpawnRequest r;
  r.argv = {"sh", "-c", script};
  r.exec_paths = {"/bin/sh"};
  return r;
}

// The child's exit status (it must have been started and not yet reaped).
int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs `r` with its stdout on a pipe; returns what it wrote and its exit
// status.
std::string run_capturing(SpawnRequest r, int* exit_code = nullptr) {
  int out[2];
  EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
  r.stdio[1] = out[1];
  r.parent_ends[1] = out[0];
  SpawnResult res = shardloop::spawn_process(r);
  ::close(out[1]);
  EXPECT_EQ(res.stage, SpawnStage::none) << "errno " << res.error;
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  const int code = res.pid > 0 ? wait_exit(res.pid) : -1;
  if (exit_code) *exit_code = code;
  return got;
}

bool reaped(pid_t pid) { return ::waitpid(pid, nullptr, WNOHANG) < 0 && errno == ECHILD; }

// A field of /proc/<child>/status, as the child itself saw it.
std::string status_field(SpawnRequest r, const std::string& field) {
  r.argv = {"cat", "/proc/self/status"};
  r.exec_paths = {"/bin/cat"};
  std::istringstream lines(run_capturing(r));
  for (std::string line; std::getline(lines, line);)
    if (line.rfind(field + ":", 0) == 0) return line.substr(line.find_first_not_of(" \t", field.size() + 1));
  return "";
}

// Under TSan vfork() is fork(): the child's report of a failed step never
// reaches the parent's memory, so only a build without it can check one.
#if defined(__SANITIZE_THREAD__)
#define SKIP_UNDER_TSAN() GTEST_SKIP() << "TSan turns vfork() into fork(): the child's report is not shared"
#else
#define SKIP_UNDER_TSAN() (void)0
#endif

TEST(Process, ChildRunsAndExitsWithItsStatus) {
  SpawnResult res = shardloop::spawn_process(sh("exit 7"));
  ASSERT_EQ(res.stage, SpawnStage::none);
  EXPECT_EQ(res.error, 0);
  ASSERT_GT(res.pid, 0);
  EXPECT_EQ(wait_exit(res.pid), 7);
}

TEST(Process, ArgvEnvAndCwdReachTheChild) {
  char dir[] = "/tmp/shardloop_spawn_XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  SpawnRequest r = sh("printf '%s|%s|%s|%s' \"$0\" \"$1\" \"$GREETING\" \"$(pwd)\"");
  r.argv.push_back("zero arg");
  r.argv.push_back("one 'quoted' arg");
  r.env = std::vector<std::string>{"GREETING=hello world", "PATH=/usr/bin:/bin"};
  r.cwd = dir;
  EXPECT_EQ(run_capturing(r), std::string("zero arg|one 'quoted' arg|hello world|") + dir);
  ::rmdir(dir);
}

// env = nullopt: the child gets a copy of this process's environment.
TEST(Process, InheritsTheEnvironmentByDefault) {
  ASSERT_EQ(::setenv("SHARDLOOP_SPAWN_INHERIT", "inherited value", 1), 0);
  const std::string got = run_capturing(sh("printf %s \"$SHARDLOOP_SPAWN_INHERIT\""));
  ::unsetenv("SHARDLOOP_SPAWN_INHERIT");
  EXPECT_EQ(got, "inherited value");
}

// The first exec path that exists is run (the caller resolved PATH).
TEST(Process, TriesExecPathsInOrder) {
  SpawnRequest r = sh("printf ran");
  r.exec_paths = {"/nonexistent/sh", "/also/missing/sh", "/bin/sh"};
  EXPECT_EQ(run_capturing(r), "ran");
}

// 4 MiB through cat, both ways at once, byte-exact.
TEST(Process, StdinAndStdoutPipesAreByteExact) {
  int in[2], out[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  SpawnRequest r;
  r.argv = {"cat"};
  r.exec_paths = {"/bin/cat"};
  r.stdio[0] = in[0];
  r.stdio[1] = out[1];
  r.parent_ends[0] = in[1];
  r.parent_ends[1] = out[0];
  SpawnResult res = shardloop::spawn_process(r);
  ::close(in[0]);
  ::close(out[1]);
  ASSERT_EQ(res.stage, SpawnStage::none);
  const std::string data = shardloop_test::pattern(4 << 20, 9);
  std::thread writer([&] {
    for (std::size_t at = 0; at < data.size();) {
      ssize_t n = ::write(in[1], data.data() + at, data.size() - at);
      if (n <= 0) break;
      at += static_cast<std::size_t>(n);
    }
    ::close(in[1]);
  });
  std::string got;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  writer.join();
  ::close(out[0]);
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
  EXPECT_EQ(wait_exit(res.pid), 0);
}

// Pipes made without close-on-exec and close_fds off: the child would hold
// its own copy of the parent's write end (and cat would never see EOF)
// unless parent_ends closes it in the child.
TEST(Process, ParentEndsAreClosedInTheChild) {
  int in[2], out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  SpawnRequest r;
  r.argv = {"cat"};
  r.exec_paths = {"/bin/cat"};
  r.close_fds = false;
  r.stdio[0] = in[0];
  r.stdio[1] = out[1];
  r.parent_ends[0] = in[1];
  r.parent_ends[1] = out[0];
  SpawnResult res = shardloop::spawn_process(r);
  ::close(in[0]);
  ::close(out[1]);
  ASSERT_EQ(res.stage, SpawnStage::none);
  shardloop_test::Watchdog dog("cat saw EOF", 20);
  ASSERT_EQ(::write(in[1], "eof soon", 8), 8);
  ::close(in[1]);
  std::string got;
  char buf[64];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  EXPECT_EQ(got, "eof soon");
  EXPECT_EQ(wait_exit(res.pid), 0);
}

// A missing program: the errno of the exec, known when the call returns,
// and the child already reaped (no zombie left for anyone to collect).
TEST(Process, MissingProgramReportsEnoentAndLeavesNoZombie) {
  SKIP_UNDER_TSAN();
  SpawnRequest r;
  r.argv = {"missing"};
  r.exec_paths = {"/nonexistent/missing", "/also/nonexistent/missing"};
  SpawnResult res = shardloop::spawn_process(r);
  EXPECT_EQ(res.stage, SpawnStage::exec);
  EXPECT_EQ(res.error, ENOENT);
  ASSERT_GT(res.pid, 0);
  EXPECT_TRUE(WIFEXITED(res.wait_status));
  EXPECT_TRUE(reaped(res.pid));
}

// As os._execvpe: a program found but not executable is the error
// reported, not the ENOENT of the paths around it.
TEST(Process, FoundButNotExecutableReportsEacces) {
  SKIP_UNDER_TSAN();
  char path[] = "/tmp/shardloop_noexec_XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "#!/bin/sh\n", 10), 10);
  ::close(fd);
  ASSERT_EQ(::chmod(path, 0644), 0);  // no x bit: refused even to root
  SpawnRequest r;
  r.argv = {"noexec"};
  r.exec_paths = {"/nonexistent/noexec", path, "/also/nonexistent/noexec"};
  SpawnResult res = shardloop::spawn_process(r);
  ::unlink(path);
  EXPECT_EQ(res.stage, SpawnStage::exec);
  EXPECT_EQ(res.error, EACCES);
  EXPECT_TRUE(reaped(res.pid));
}

TEST(Process, MissingCwdFailsAtChdir) {
  SKIP_UNDER_TSAN();
  SpawnRequest r = sh("exit 0");
  r.cwd = "/nonexistent/dir";
  SpawnResult res = shardloop::spawn_process(r);
  EXPECT_EQ(res.stage, SpawnStage::chdir);
  EXPECT_EQ(res.error, ENOENT);
  EXPECT_TRUE(reaped(res.pid));
}

// A descriptor to keep that is not open fails a setup step.
TEST(Process, BadDescriptorToKeepFailsSetup) {
  SKIP_UNDER_TSAN();
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const int bad = fds[0];
  ::close(fds[0]);
  ::close(fds[1]);
  SpawnRequest r = sh("exit 0");
  r.keep_fds = {bad};
  SpawnResult res = shardloop::spawn_process(r);
  EXPECT_EQ(res.stage, SpawnStage::setup);
  EXPECT_EQ(res.error, EBADF);
  EXPECT_TRUE(reaped(res.pid));
}

// close_fds closes an inheritable descriptor; pass_fds (keep_fds) keeps one
// open and makes it inheritable even if it was close-on-exec; without
// close_fds an inheritable one stays.
TEST(Process, CloseFdsAndKeepFds) {
  int plain[2], cloexec[2];
  ASSERT_EQ(::pipe(plain), 0);
  ASSERT_EQ(::pipe2(cloexec, O_CLOEXEC), 0);
  auto open_in_child = [](int fd, bool close_fds, std::vector<int> keep) {
    SpawnRequest r = sh("test -e /proc/self/fd/" + std::to_string(fd));
    r.close_fds = close_fds;
    r.keep_fds = std::move(keep);
    SpawnResult res = shardloop::spawn_process(r);
    EXPECT_EQ(res.stage, SpawnStage::none);
    return wait_exit(res.pid) == 0;
  };
  EXPECT_FALSE(open_in_child(plain[0], true, {}));
  EXPECT_TRUE(open_in_child(plain[0], false, {}));
  EXPECT_TRUE(open_in_child(plain[0], true, {plain[0]}));
  EXPECT_FALSE(open_in_child(cloexec[0], false, {}));
  EXPECT_TRUE(open_in_child(cloexec[0], true, {cloexec[0]}));
  // Kept, but the others around it are still closed.
  EXPECT_FALSE(open_in_child(plain[1], true, {plain[0], cloexec[0]}));
  for (int fd : {plain[0], plain[1], cloexec[0], cloexec[1]}) ::close(fd);
}

// The child's stdout given as its fd 0 and stderr as 1: each is moved out
// of the way before an earlier dup2() could overwrite it.
TEST(Process, StdioThatOverlapsIsPlacedCorrectly) {
  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  const int saved0 = ::dup(0);
  ASSERT_GE(::dup2(out[1], 0), 0);  // this process's fd 0 is now the pipe
  SpawnRequest r = sh("printf to-out; printf to-err >&2");
  r.stdio[1] = 0;  // the pipe, found at fd 0
  r.stdio[2] = 0;
  SpawnResult res = shardloop::spawn_process(r);
  ::dup2(saved0, 0);
  ::close(saved0);
  ::close(out[1]);
  ASSERT_EQ(res.stage, SpawnStage::none);
  std::string got;
  char buf[64];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  EXPECT_EQ(got, "to-outto-err");
  EXPECT_EQ(wait_exit(res.pid), 0);
}

TEST(Process, NewSessionProcessGroupAndUmask) {
  // /proc/self/stat: pid (comm) state ppid pgrp session ...
  auto ids = [](SpawnRequest r) {
    r.argv = {"cat", "/proc/self/stat"};
    r.exec_paths = {"/bin/cat"};
    std::string stat = run_capturing(r);
    std::istringstream rest(stat.substr(stat.rfind(')') + 2));
    std::string state;
    long ppid = 0, pgrp = 0, session = 0;
    rest >> state >> ppid >> pgrp >> session;
    return std::pair<long, long>(pgrp, session);
  };
  SpawnRequest plain;
  auto [pgrp, session] = ids(plain);
  EXPECT_EQ(pgrp, ::getpgrp());
  EXPECT_EQ(session, ::getsid(0));

  SpawnRequest group;
  group.process_group = 0;  // a group of its own
  auto [g_pgrp, g_session] = ids(group);
  EXPECT_NE(g_pgrp, ::getpgrp());
  EXPECT_EQ(g_session, ::getsid(0));

  SpawnRequest leader;
  leader.new_session = true;
  auto [s_pgrp, s_session] = ids(leader);
  EXPECT_EQ(s_pgrp, s_session);
  EXPECT_NE(s_session, ::getsid(0));

  SpawnRequest masked = sh("umask");
  masked.umask = 027;
  EXPECT_EQ(run_capturing(masked), "0027\n");
}

// Signals are blocked only around vfork(): the child gets the caller's
// mask. SIGPIPE ignored here is default there (restore_signals), another
// ignored signal stays ignored, as with Popen.
TEST(Process, SignalMaskAndDispositions) {
  struct sigaction ign = {}, old_pipe, old_usr2;
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  ASSERT_EQ(::sigaction(SIGPIPE, &ign, &old_pipe), 0);
  ASSERT_EQ(::sigaction(SIGUSR2, &ign, &old_usr2), 0);
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &block, &old_mask), 0);
  sigset_t now_blocked;
  ::pthread_sigmask(SIG_SETMASK, nullptr, &now_blocked);

  const auto bit = [](int sig) { return 1ull << (sig - 1); };
  const auto mask_of = [](const std::string& hex) { return std::strtoull(hex.c_str(), nullptr, 16); };
  SpawnRequest r;
  const unsigned long long blk = mask_of(status_field(r, "SigBlk"));
  const unsigned long long ign_restored = mask_of(status_field(r, "SigIgn"));
  r.restore_signals = false;
  const unsigned long long ign_kept = mask_of(status_field(r, "SigIgn"));

  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGUSR2, &old_usr2, nullptr);

  unsigned long long expected_blk = 0;
  for (int sig = 1; sig < 64; ++sig)
    if (sigismember(&now_blocked, sig) == 1) expected_blk |= bit(sig);
  EXPECT_EQ(blk, expected_blk);
  EXPECT_TRUE(blk & bit(SIGUSR1));
  EXPECT_FALSE(ign_restored & bit(SIGPIPE));
  EXPECT_TRUE(ign_restored & bit(SIGUSR2));
  EXPECT_TRUE(ign_kept & bit(SIGPIPE));
}

// The call returns once the child has exec'd: from a loop callback, with a
// child that lives until its stdin closes, the loop keeps running while
// the child does, and its exit comes only when the loop lets it.
TEST(Process, ReturnsFromTheLoopWhileTheChildRuns) {
  shardloop::Loop loop;
  int in[2];
  ASSERT_EQ(::pipe2(in, O_CLOEXEC), 0);
  SpawnResult res;
  bool later_ran = false;
  bool alive_after_spawn = false;
  loop.call_soon([&] {
    SpawnRequest r;
    r.argv = {"cat"};
    r.exec_paths = {"/bin/cat"};
    r.stdio[0] = in[0];
    r.parent_ends[0] = in[1];
    res = shardloop::spawn_process(r);
    alive_after_spawn = res.pid > 0 && ::waitpid(res.pid, nullptr, WNOHANG) == 0;
    loop.call_soon([&] { later_ran = true; });
  });
  {
    shardloop_test::Watchdog dog("spawn from the loop", 20);
    shardloop_test::spin(loop, 3);
  }
  ::close(in[0]);
  ASSERT_EQ(res.stage, SpawnStage::none);
  EXPECT_TRUE(alive_after_spawn);
  EXPECT_TRUE(later_ran);
  EXPECT_EQ(::waitpid(res.pid, nullptr, WNOHANG), 0) << "the child ended before its stdin closed";
  ::close(in[1]);
  EXPECT_EQ(wait_exit(res.pid), 0);
  loop.close();
}

// Thread-safe: two threads spawning at once each get their own child's
// status.
TEST(Process, ConcurrentSpawnsFromTwoThreads) {
  std::vector<int> wrong(2, 0);
  auto spawner = [&](int t) {
    for (int i = 0; i < 20; ++i) {
      const int code = (t * 20 + i) % 200;
      SpawnResult res = shardloop::spawn_process(sh("exit " + std::to_string(code)));
      if (res.stage != SpawnStage::none || wait_exit(res.pid) != code) ++wrong[t];
    }
  };
  std::thread a(spawner, 0), b(spawner, 1);
  a.join();
  b.join();
  EXPECT_EQ(wrong, std::vector<int>(2, 0));
}

}  // namespace
