// Starting a child process without waiting on a pipe for its exec.
//
// spawn_process() runs the child with vfork(): the calling thread is
// suspended by the kernel only until the child has called execve() or
// _exit(), and the child reports a failed step through memory it shares with
// the parent. So the outcome of the exec is known when the call returns,
// with no read of an error pipe (which is what keeps subprocess.Popen's
// caller waiting). The setup done in the child follows CPython's
// _posixsubprocess for the arguments it supports; running code in the child
// (preexec_fn) needs fork() and is not offered here. User and groups are
// set with the raw system calls: glibc's setuid() & co. signal every thread
// of the process to change theirs too, which a child sharing the parent's
// memory must not do; the raw calls change the child's own credentials.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace shardloop {

struct SpawnRequest {
  std::vector<std::string> argv;
  // Paths tried in order with execve(), as os._execvpe would (the caller
  // resolves PATH: nothing may allocate in the child).
  std::vector<std::string> exec_paths;
  // "NAME=value" entries; nullopt: a copy of this process's environment,
  // taken before the child starts.
  std::optional<std::vector<std::string>> env;
  std::optional<std::string> cwd;
  // The descriptors that become the child's 0, 1 and 2 (-1: inherited).
  int stdio[3] = {-1, -1, -1};
  // The parent's ends of the child's pipes, closed in the child (-1: none).
  int parent_ends[3] = {-1, -1, -1};
  // Descriptors the child keeps open and inheritable (pass_fds).
  std::vector<int> keep_fds;
  bool close_fds = true;
  bool restore_signals = true;  // SIGPIPE and SIGXFSZ back to SIG_DFL
  bool new_session = false;     // setsid()
  pid_t process_group = -1;     // setpgid(0, process_group) when >= 0
  int umask = -1;               // umask() when >= 0
  std::optional<std::vector<gid_t>> groups;  // setgroups() (extra_groups)
  std::optional<gid_t> gid;                  // setregid(gid, gid) (group)
  std::optional<uid_t> uid;                  // setreuid(uid, uid) (user)
};

// Which step failed, named as CPython's child reports it.
enum class SpawnStage {
  none,   // the child runs the program
  fork,   // vfork() itself failed: no child
  chdir,  // chdir(cwd)
  setup,  // another step before the exec (descriptors, session, group, ids)
  exec,   // every execve() failed
};

struct SpawnResult {
  pid_t pid = -1;            // the child (already reaped when stage != none); -1 without one
  int error = 0;             // errno of the failed step
  SpawnStage stage = SpawnStage::none;
  int wait_status = 0;       // the failed child's status (it is reaped here)
};

// Thread-safe; blocks only while the kernel runs the child up to its
// execve() or _exit(). A failed child is reaped before this returns.
SpawnResult spawn_process(const SpawnRequest& request);

}  // namespace shardloop
