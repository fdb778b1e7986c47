// shardloop._core._spawn: the engine's spawn_process() for
// python_pkg/shardloop/_subprocess.py, which converts Popen's arguments and
// turns a failure into Popen's exception.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "shardloop/process.hpp"

extern char** environ;

namespace py = pybind11;

namespace shardloop::py_bindings {

namespace {

const char* stage_name(SpawnStage stage) {
  switch (stage) {
    case SpawnStage::none: return "";
    case SpawnStage::fork: return "fork";
    case SpawnStage::chdir: return "chdir";
    case SpawnStage::setup: return "setup";
    case SpawnStage::exec: return "exec";
  }
  return "setup";
}

std::tuple<int, int, std::string, int> spawn(std::vector<std::string> argv, std::vector<std::string> exec_paths,
                                             std::optional<std::vector<std::string>> env,
                                             std::optional<std::string> cwd, std::tuple<int, int, int> stdio,
                                             std::tuple<int, int, int> parent_ends, std::vector<int> keep_fds,
                                             bool close_fds, bool restore_signals, bool new_session,
                                             int process_group, int umask, std::optional<std::vector<gid_t>> groups,
                                             std::optional<gid_t> gid, std::optional<uid_t> uid) {
  SpawnRequest request;
  request.argv = std::move(argv);
  request.exec_paths = std::move(exec_paths);
  if (env) {
    request.env = std::move(*env);
  } else {
    // Copied while the GIL is held: os.environ changes it (putenv) only
    // under the GIL, and the GIL is let go below.
    std::vector<std::string> copy;
    for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) copy.emplace_back(*entry);
    request.env = std::move(copy);
  }
  request.cwd = std::move(cwd);
  std::tie(request.stdio[0], request.stdio[1], request.stdio[2]) = stdio;
  std::tie(request.parent_ends[0], request.parent_ends[1], request.parent_ends[2]) = parent_ends;
  request.keep_fds = std::move(keep_fds);
  request.close_fds = close_fds;
  request.restore_signals = restore_signals;
  request.new_session = new_session;
  request.process_group = process_group;
  request.umask = umask;
  request.groups = std::move(groups);
  request.gid = gid;
  request.uid = uid;

  SpawnResult result;
  {
    // Other threads (other shards) run while this one waits for the exec.
    py::gil_scoped_release released;
    result = spawn_process(request);
  }
  return {result.pid, result.error, stage_name(result.stage), result.wait_status};
}

}  // namespace

void init_process(py::module_& m) {
  m.def("_spawn", &spawn,
        "Starts a child with vfork()+execve(): (pid, errno, failed stage or '', wait status of a failed child).");
}

}  // namespace shardloop::py_bindings
