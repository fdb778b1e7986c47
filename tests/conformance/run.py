"""Run CPython's test_asyncio mixins on shardloop, uvloop and asyncio's loop.

    python tests/conformance/run.py                 # all loops, table + diff
    python tests/conformance/run.py --update        # ... and rewrite expected_pass.txt
    python tests/conformance/run.py --gate          # shardloop, listed tests only; exit 1 on regressions
    python tests/conformance/run.py -k sendfile --loops shardloop

Tests run in child processes (worker.py), one bound class per child, a chunk
of tests each; a test that crashes its child or outlives --timeout is recorded
as ``crash``/``timeout`` and the rest of its chunk continues in a new child.
Full tracebacks go to OUT/results.json and OUT/failures-<loop>.txt, child
output to OUT/logs/ (OUT: --out, default build/conformance; build/conformance/gate
for --gate).
"""

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import loops  # noqa: E402

try:
    import suites  # noqa: E402
except ImportError as exc:
    sys.exit(f"CPython's test package is missing ({exc}); on Debian/Ubuntu install "
             f"libpython{sys.version_info[0]}.{sys.version_info[1]}-testsuite "
             "(`make conformance-deps` does).")

EXPECTED = os.path.join(HERE, "expected_pass.txt")
NOT_APPLICABLE = os.path.join(HERE, "not_applicable.txt")
PASSING = ("pass", "xfail")
# Columns of the table; timeouts and crashes count as errors there.
KINDS = ("pass", "fail", "error", "skip")


def kind_of(outcome):
    return {"xfail": "pass", "timeout": "error", "crash": "error"}.get(outcome, outcome)


def read_id_file(path):
    """{test id: rest of the line} for a file of ids, '#' starting comments."""
    entries = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    test_id, _, rest = line.partition(" ")
                    entries[test_id] = rest.strip().lstrip("-").strip()
    return entries


class Chunk:
    """Some tests of one bound class on one loop, run until each has an outcome."""

    def __init__(self, loop_name, key, methods, timeout, log_dir, index):
        self.loop_name, self.key, self.methods = loop_name, key, list(methods)
        self.timeout = timeout
        self.log_path = os.path.join(log_dir, f"{loop_name}-{key}-{index}.log")
        self.results = {}  # method -> (outcome, detail, seconds)

    def run(self):
        remaining = list(self.methods)
        while remaining:
            progressed = self._run_child(remaining)
            remaining = [m for m in remaining if m not in self.results]
            if remaining and not progressed:
                break
        for method in self.methods:
            self.results.setdefault(method, ("error", self._fixture_error or "worker never ran the test", 0.0))
        return self

    _fixture_error = None

    def _run_child(self, methods):
        fd, progress_path = tempfile.mkstemp(prefix="conformance-", suffix=".progress")
        os.close(fd)
        with open(self.log_path, "a") as log:
            log.write(f"=== child for {len(methods)} tests\n")
            log.flush()
            child = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "worker.py"), self.loop_name, self.key,
                 progress_path, str(self.timeout)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, text=True)
            child.stdin.write("\n".join(methods) + "\n")
            child.stdin.close()
        _LIVE.add(child)
        try:
            return self._watch(child, progress_path)
        finally:
            _LIVE.discard(child)
            os.unlink(progress_path)

    def _watch(self, child, progress_path):
        current, started, progressed = None, time.monotonic(), False
        offset, pending = 0, ""
        last_activity = time.monotonic()
        while True:
            exited = child.poll() is not None
            with open(progress_path) as f:
                f.seek(offset)
                data = f.read()
                offset = f.tell()
            pending += data
            *lines, pending = pending.split("\n")
            for line in lines:
                what, _, rest = line.partition(" ")
                last_activity = time.monotonic()
                if what == "start":
                    current, started, progressed = rest, time.monotonic(), True
                elif what == "done":
                    method, outcome, detail = rest.split(" ", 2)
                    self.results[method] = (outcome, json.loads(detail), time.monotonic() - started)
                    current = None
                elif what == "fixture":
                    self._fixture_error = json.loads(rest)
            if exited:
                break
            now = time.monotonic()
            stuck = current is not None and now - started > self.timeout
            # Class fixtures or imports that hang get twice a test's time.
            idle = current is None and now - last_activity > 2 * self.timeout
            if stuck or idle:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                if stuck:
                    self.results[current] = ("timeout", f"no result after {self.timeout:.0f} s; "
                                             f"traceback in {self.log_path}", now - started)
                    return True
                self._fixture_error = f"child idle for {2 * self.timeout:.0f} s outside any test"
                return progressed
            time.sleep(0.05)
        if current is not None:
            self.results[current] = ("crash", f"child exited with status {child.returncode} "
                                     f"during the test; see {self.log_path}", time.monotonic() - started)
        _reap_group(child.pid)
        return progressed


# Children still running, killed if the run is interrupted (they live in
# sessions of their own, so ^C does not reach them).
_LIVE = set()


def _reap_group(pgid):
    # Subprocesses a test left behind must not outlive the run.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def chunks_for(tests, loop_names, chunk_size, timeout, log_dir):
    by_key = collections.defaultdict(list)
    for test in tests:
        by_key[test.key].append(test.method)
    chunks = []
    for loop_name in loop_names:
        for key, methods in by_key.items():
            for i in range(0, len(methods), chunk_size):
                chunks.append(Chunk(loop_name, key, methods[i:i + chunk_size], timeout, log_dir, i // chunk_size))
    # The longest chunks first keeps both workers busy to the end.
    chunks.sort(key=lambda c: -len(c.methods) * (3 if c.key in ("SSLTests", "StartTLSTests") else 1))
    return chunks


def run_all(tests, loop_names, jobs, chunk_size, timeout, out_dir, quiet=False):
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    for name in os.listdir(log_dir):
        os.unlink(os.path.join(log_dir, name))
    by_key_method = {(t.key, t.method): t.id for t in tests}
    chunks = chunks_for(tests, loop_names, chunk_size, timeout, log_dir)
    results = {name: {} for name in loop_names}
    done = 0
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        for chunk in concurrent.futures.as_completed([pool.submit(c.run) for c in chunks]):
            chunk = chunk.result()
            for method, result in chunk.results.items():
                results[chunk.loop_name][by_key_method[(chunk.key, method)]] = result
            done += 1
            if not quiet:
                counts = collections.Counter(kind_of(r[0]) for r in chunk.results.values())
                print(f"  [{done}/{len(chunks)}] {chunk.loop_name:<9} {chunk.key:<22} "
                      + " ".join(f"{k}={counts[k]}" for k in KINDS if counts[k]), flush=True)
    except KeyboardInterrupt:
        for child in list(_LIVE):
            _reap_group(child.pid)
        print("\ninterrupted", file=sys.stderr, flush=True)
        os._exit(130)
    pool.shutdown()
    return results


def mixin_of(test_id):
    return test_id.rsplit(".", 1)[0]


def first_line_of_cause(detail):
    """The exception line of a traceback (the last non-blank line), shortened."""
    lines = [line for line in str(detail).strip().splitlines() if line.strip()]
    line = lines[-1].strip() if lines else ""
    return line if len(line) <= 160 else line[:157] + "..."


def print_table(tests, results, loop_names):
    mixins = list(dict.fromkeys(mixin_of(t.id) for t in tests))
    width = max(len(m) for m in mixins + ["total"]) + 2
    head = "".join(f"  {name:^19}   " for name in loop_names)
    sub = "".join(f"  {'pass':>4} {'fail':>4} {'err':>4} {'skip':>4}   " for _ in loop_names)
    print(f"{'':<{width}}{head}\n{'mixin':<{width}}{sub}")
    totals = {name: collections.Counter() for name in loop_names}
    for mixin in mixins + ["total"]:
        row = f"{mixin:<{width}}"
        for name in loop_names:
            if mixin == "total":
                counts = totals[name]
            else:
                counts = collections.Counter(kind_of(o[0]) for i, o in results[name].items() if mixin_of(i) == mixin)
                totals[name].update(counts)
            row += f"  {counts['pass']:>4} {counts['fail']:>4} {counts['error']:>4} {counts['skip']:>4}   "
        print(row)
    for name in loop_names:
        stuck = collections.Counter(o[0] for o in results[name].values() if o[0] in ("timeout", "crash"))
        if stuck:
            print(f"  {name}: errors include " + ", ".join(f"{n} {k}" for k, n in stuck.items()))


def print_diff(tests, results, reference, subject, not_applicable):
    """Tests passing on *reference* but not on *subject*, grouped by mixin."""
    diff = [t.id for t in tests
            if results[reference].get(t.id, ("?",))[0] in PASSING
            and results[subject].get(t.id, ("?",))[0] not in PASSING]
    relevant = [i for i in diff if i not in not_applicable]
    print(f"\n{len(relevant)} tests pass on {reference} but not on {subject}"
          + (f" (+{len(diff) - len(relevant)} listed as not applicable)" if len(diff) != len(relevant) else "")
          + (":" if relevant else "."))
    for test_id in relevant:
        outcome, detail, _ = results[subject][test_id]
        print(f"  {test_id}  [{outcome}] {first_line_of_cause(detail)}")
    return relevant


def write_failures(out_dir, results, loop_name, ids):
    path = os.path.join(out_dir, f"failures-{loop_name}.txt")
    with open(path, "w") as f:
        for test_id in ids:
            outcome, detail, _ = results[loop_name][test_id]
            f.write(f"===== {test_id} [{outcome}]\n{detail}\n\n")
    return path


def write_expected(results, not_applicable, kept):
    """Rewrite expected_pass.txt: this run's passing tests plus *kept* ids
    (listed tests this run did not include, e.g. filtered out by -k)."""
    passing = sorted({i for i, r in results.items() if r[0] in PASSING and i not in not_applicable} | set(kept))
    with open(EXPECTED, "w") as f:
        f.write("# CPython test_asyncio tests that pass on shardloop; `make conformance-gate`\n"
                "# (part of `make test`) fails if one of them stops passing.\n"
                "# Regenerate with `make conformance-update`.\n"
                f"# {suites.python_tag()}, {datetime.date.today().isoformat()}, {len(passing)} tests\n")
        for test_id in passing:
            f.write(test_id + "\n")
    return len(passing)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loops", default=",".join(loops.LOOP_NAMES))
    parser.add_argument("-k", dest="pattern", help="only test ids containing this substring")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per test (default 15)")
    parser.add_argument("--chunk", type=int, default=40, help="tests per child process")
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "conformance"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--update", action="store_true", help="rewrite expected_pass.txt from shardloop's results")
    mode.add_argument("--gate", action="store_true", help="run shardloop on expected_pass.txt's tests only")
    args = parser.parse_args()

    tests = all_tests = suites.collect()
    not_applicable = read_id_file(NOT_APPLICABLE)
    loop_names = [n for n in args.loops.split(",") if n]
    if args.gate:
        # Kept apart so a gate run leaves the last full run's results alone.
        args.out = os.path.join(args.out, "gate")
        loop_names = ["shardloop"]
        expected = read_id_file(EXPECTED)
        known = {t.id for t in tests}
        missing = sorted(set(expected) - known)
        tests = [t for t in tests if t.id in expected]
    if args.update and "shardloop" not in loop_names:
        parser.error("--update needs shardloop among --loops")
    if args.pattern:
        tests = [t for t in tests if args.pattern in t.id]
    for name in loop_names:
        try:
            print(f"{name:<10} {loops.describe(name)}")
        except Exception as exc:
            print(f"{name:<10} not importable: {exc!r}")
    print(f"{len(tests)} tests from {suites.python_tag()}'s test.test_asyncio, {args.jobs} workers, "
          f"{args.timeout:.0f} s per test", flush=True)

    t0 = time.monotonic()
    results = run_all(tests, loop_names, args.jobs, args.chunk, args.timeout, args.out)
    elapsed = time.monotonic() - t0
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"python": sys.version, "results": results}, f, indent=1)

    print()
    print_table(tests, results, loop_names)
    print(f"\n{elapsed:.0f} s; tracebacks in {os.path.relpath(args.out, os.getcwd())}/")

    if args.gate:
        broken = [t.id for t in tests if results["shardloop"][t.id][0] not in PASSING]
        if broken:
            # One more try in fresh children: the gate fails on regressions,
            # not on a test that lost a race on a loaded machine.
            print(f"\nrerunning {len(broken)} tests that did not pass", flush=True)
            retry = run_all([t for t in tests if t.id in broken], loop_names, args.jobs, args.chunk,
                            args.timeout, os.path.join(args.out, "rerun"), quiet=True)
            flaky = [i for i in broken if retry["shardloop"][i][0] in PASSING]
            for test_id in flaky:
                print(f"  flaky: {test_id} passed when rerun")
            broken = [i for i in broken if i not in flaky]
        for test_id in missing:
            print(f"  note: {test_id} is listed but not in this Python's test_asyncio")
        if broken:
            write_failures(args.out, results, "shardloop", broken)
            print(f"\nconformance gate: {len(broken)} listed tests no longer pass on shardloop:")
            for test_id in broken:
                outcome, detail, _ = results["shardloop"][test_id]
                print(f"  {test_id}  [{outcome}] {first_line_of_cause(detail)}")
            return 1
        print(f"conformance gate: all {len(tests)} listed tests pass on shardloop")
        return 0

    if "shardloop" in loop_names:
        for reference in ("asyncio", "uvloop"):
            if reference in loop_names:
                diff = print_diff(tests, results, reference, "shardloop", not_applicable)
                if reference == "asyncio":
                    path = write_failures(args.out, results, "shardloop", diff)
                    print(f"  (tracebacks: {os.path.relpath(path, os.getcwd())})")
        listed = read_id_file(EXPECTED)
        lost = sorted(i for i in listed if i in results["shardloop"] and results["shardloop"][i][0] not in PASSING)
        if lost:
            print(f"\n{len(lost)} tests of expected_pass.txt do not pass: " + ", ".join(lost))
    if args.update:
        run_ids = {t.id for t in tests}
        kept = [i for i in read_id_file(EXPECTED) if i not in run_ids and i in {t.id for t in all_tests}]
        count = write_expected(results["shardloop"], not_applicable, kept)
        print(f"\nwrote {os.path.relpath(EXPECTED, os.getcwd())}: {count} tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
