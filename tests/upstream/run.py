#!/usr/bin/env python3
"""`make upstream`: anyio's, aiohttp's and uvicorn's own test suites, each run
on asyncio's loop, on uvloop and on shardloop.

Their pinned sdists (which ship their tests) are downloaded into
build/upstream/sdist and unpacked into build/upstream/src; nothing of theirs
is copied into this repository. Their test dependencies, uvloop and a wheel
of this checkout go into build/upstream/venv. Each run happens in a private
mount namespace whose /etc/hosts has `::1 localhost` (this sandbox's lacks
it, which alone fails dozens of anyio tests on every loop). loopcheck.py
(the pytest plugin next to this file) selects the loop and records which
loop the tests ran on; a run whose tests were not seen on the intended loop
fails. The table and the tests that pass on asyncio's loop but not on
shardloop are printed and written to build/upstream/results/summary.md.

    run.py [--suite anyio,aiohttp,uvicorn] [--loop asyncio,uvloop,shardloop] [-k EXPR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / "build" / "upstream"
VENV = WORK / "venv"
VPY = VENV / "bin" / "python"
RESULTS = WORK / "results"

LOOPS = ("asyncio", "uvloop", "shardloop")
# type(asyncio.get_running_loop()) each run must see.
LOOP_TYPES = {"asyncio": "asyncio.unix_events._UnixSelectorEventLoop", "uvloop": "uvloop.Loop",
              "shardloop": "shardloop._loop.Loop"}


@dataclasses.dataclass
class Suite:
    name: str
    version: str
    install: list[str]          # the package itself (a wheel of the same version)
    test_deps: list[str]        # what its tests import, from its dependency groups
    args: list[str]             # pytest arguments (their ini's addopts are replaced where it
                                # needs plugins we do not install: xdist, coverage)
    timeout: int                # seconds for one whole run


SUITES = {s.name: s for s in [
    Suite("anyio", "4.16.0", ["anyio==4.16.0"],
          ["blockbuster>=1.5.29", "hypothesis>=4.18.2", "psutil>=5.9", "pytest>=9.0", "pytest-mock>=3.14",
           "pytest-timeout>=2.4.0", "trustme>=1.0.0", "truststore>=0.9.1"],
          ["tests", "-p", "loopcheck"], 1800),
    Suite("aiohttp", "3.14.5", ["aiohttp[speedups]==3.14.5"],
          ["blockbuster", "coverage", "freezegun", "isal", "zlib-ng", "proxy.py>=2.4.4rc5", "pytest", "pytest-codspeed",
           "pytest-mock", "pytest-timeout", "trustme", "gunicorn"],
          ["tests", "-p", "loopcheck", "-o", "addopts=", "--strict-markers", "-ra",
           "-m", "not dev_mode and not autobahn and not internal", "--aiohttp-loop=pyloop"], 2400),
    Suite("uvicorn", "0.55.0", ["uvicorn[standard]==0.55.0"],
          ["pytest>=9.1.1", "pytest-mock", "pytest-timeout", "trustme", "cryptography", "httpx2", "a2wsgi",
           "wsproto", "zttp", "anyio"],
          ["tests", "-p", "loopcheck", "-o", "addopts=", "-rxXs", "--strict-config", "--strict-markers",
           "--timeout=60", "--ignore=tests/benchmarks"], 1800),
]}


def sh(cmd: list[str], **kwargs) -> None:
    """Runs cmd; its output is shown only when it fails (pip's is noisy here)."""
    print("+", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    if done.returncode != 0:
        print(done.stdout, flush=True)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, cmd))}")


def fetch(suite: Suite) -> Path:
    """The unpacked sdist (downloaded once)."""
    src = WORK / "src" / f"{suite.name}-{suite.version}"
    if src.is_dir():
        return src
    sdists = WORK / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = next(sdists.glob(f"{suite.name}-{suite.version}.tar.gz"), None)
    if archive is None:
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
            f"{suite.name}=={suite.version}", "-d", str(sdists)])
        archive = next(sdists.glob(f"{suite.name}-{suite.version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(WORK / "src", filter="data")
    return src


def venv(suites: list[Suite]) -> None:
    """build/upstream/venv with every suite's packages and test deps, uvloop,
    and this checkout's shardloop (reinstalled every time)."""
    reqs = sorted({r for s in suites for r in s.install + s.test_deps} | {"uvloop"})
    stamp = VENV / f".deps-{hashlib.sha1(' '.join(reqs).encode()).hexdigest()[:12]}"
    if not VPY.exists():
        sh([sys.executable, "-m", "venv", str(VENV)])
    if not stamp.exists():
        sh([str(VPY), "-m", "pip", "install", "-q", *reqs])
        stamp.touch()
    wheels = WORK / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    # Shares `make install`'s scikit-build-core cache, so this is quick.
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
        "-C", "build-dir=build/{wheel_tag}", "-w", str(wheels), "."], cwd=ROOT)
    sh([str(VPY), "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", *map(str, wheels.glob("*.whl"))])


def hosts_file() -> Path:
    path = WORK / "hosts"
    text = Path("/etc/hosts").read_text()
    if not any(line.split()[:1] == ["::1"] and "localhost" in line.split() for line in text.splitlines()):
        text += "\n::1 localhost ip6-localhost ip6-loopback\n"
    path.write_text(text)
    return path


@dataclasses.dataclass
class Run:
    suite: str
    loop: str
    outcomes: dict[str, tuple[str, str]]   # test -> (outcome, reason)
    seconds: float
    returncode: int
    on_loop: int = 0
    wrong_loop: list[str] = dataclasses.field(default_factory=list)
    foreign: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for o, _ in self.outcomes.values() if o == outcome)


RANK = {"skipped": 0, "passed": 1, "failed": 2, "error": 3}


def parse_junit(path: Path) -> dict[str, tuple[str, str]]:
    outcomes: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                reason = (child.get("message") or child.text or "").strip().splitlines()[:1]
                reason = reason[0][:300] if reason else ""
                if outcome != "skipped":
                    break
        old = outcomes.get(test)
        if old is None or RANK[outcome] > RANK[old[0]]:
            outcomes[test] = (outcome, reason)
    return outcomes


def run_suite(suite: Suite, loop: str, src: Path, hosts: Path, extra: list[str]) -> Run:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"{suite.name}-{loop}"
    junit, report, log = RESULTS / f"{tag}.xml", RESULTS / f"{tag}.json", RESULTS / f"{tag}.log"
    for path in (junit, report):
        path.unlink(missing_ok=True)
    env = dict(os.environ, SHARDLOOP_UPSTREAM_LOOP=loop, SHARDLOOP_UPSTREAM_SUITE=suite.name,
               SHARDLOOP_UPSTREAM_REPORT=str(report), PYTHONPATH=str(HERE), PYTHONDONTWRITEBYTECODE="1")
    for name in ("PYTEST_ADDOPTS", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PATH"] = f"{VENV / 'bin'}:{env.get('PATH', '')}"
    # The venv's pytest script, not `python -m pytest`: that would put the
    # unpacked source tree first on sys.path (aiohttp's without its C parts).
    pytest = [str(VENV / "bin" / "pytest"), "-p", "no:cacheprovider", f"--junitxml={junit}", *suite.args, *extra]
    inner = 'mount --bind "$0" /etc/hosts && exec "$@"'
    cmd = ["unshare", "-m", "sh", "-c", inner, str(hosts), *pytest]
    print(f"== {suite.name} {suite.version} on {loop} (log: {log.relative_to(ROOT)})", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        try:
            rc = subprocess.run(cmd, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=suite.timeout, start_new_session=True).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            out.write(f"\n[run.py] killed after {suite.timeout} s\n")
    result = Run(suite.name, loop, parse_junit(junit), time.monotonic() - start, rc)
    check_loop(result, report)
    print(f"   {result.count('passed')} passed, {result.count('failed')} failed, {result.count('error')} errors, "
          f"{result.count('skipped')} skipped, {result.on_loop} tests seen on {LOOP_TYPES[loop]}, "
          f"{result.seconds:.0f} s", flush=True)
    return result


def check_loop(result: Run, report: Path) -> None:
    data: dict = {}
    for path in [report, *report.parent.glob(report.name + ".gw*")]:
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if isinstance(value, dict):
                    data.setdefault(key, {}).update(value)
    want = LOOP_TYPES[result.loop]
    seen = {**data.get("running_loops", {})}
    for test, types in data.get("fixture_loops", {}).items():
        seen[test] = sorted(set(seen.get(test, [])) | set(types))
    result.on_loop = sum(1 for types in seen.values() if want in types)
    result.wrong_loop = sorted(t for t, types in seen.items() if set(types) - {want})
    result.foreign = sum(data.get("foreign_asyncio_loops", {}).values())


def loop_check_ok(run: Run) -> bool:
    return run.on_loop > 0 and not run.wrong_loop


def table(runs: list[Run]) -> str:
    lines = ["| suite | loop | passed | failed | errors | skipped | tests seen on the loop | loop check | time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        check = "ok" if loop_check_ok(r) else f"FAILED ({len(r.wrong_loop)} on another loop)"
        lines.append(f"| {r.suite} | {r.loop} | {r.count('passed')} | {r.count('failed')} | {r.count('error')} | "
                     f"{r.count('skipped')} | {r.on_loop} | {check} | {r.seconds:.0f} s |")
    return "\n".join(lines)


def regressions(runs: list[Run]) -> list[str]:
    by = {(r.suite, r.loop): r for r in runs}
    lines = []
    for r in runs:
        if r.loop != "shardloop" or (r.suite, "asyncio") not in by:
            continue
        base = by[(r.suite, "asyncio")]
        for test, (outcome, _) in sorted(base.outcomes.items()):
            if outcome != "passed":
                continue
            got, reason = r.outcomes.get(test, ("missing (not run: hang or crash?)", ""))
            if got != "passed":
                lines.append(f"- {r.suite}: `{test}`: {got}: {reason}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=",".join(SUITES))
    parser.add_argument("--loop", default=",".join(LOOPS))
    parser.add_argument("-k", dest="keyword", help="passed to pytest -k")
    parser.add_argument("--no-install", action="store_true", help="reuse the venv's shardloop as it is")
    args = parser.parse_args()
    suites = [SUITES[name] for name in args.suite.split(",")]
    loops = args.loop.split(",")
    if unknown := set(loops) - set(LOOPS):
        parser.error(f"unknown loop(s): {', '.join(sorted(unknown))}")
    srcs = {s.name: fetch(s) for s in suites}
    if not args.no_install:
        venv(suites)
    hosts = hosts_file()
    extra = ["-k", args.keyword] if args.keyword else []
    runs = [run_suite(s, loop, srcs[s.name], hosts, extra) for s in suites for loop in loops]
    diff = regressions(runs)
    text = table(runs) + "\n\nPassing on asyncio's loop, not on shardloop:\n" + ("\n".join(diff) or "- none")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(text + "\n")
    print("\n" + text)
    bad = [r for r in runs if not loop_check_ok(r) or not r.outcomes]
    for r in bad:
        print(f"{r.suite} on {r.loop}: no results or tests not seen on {LOOP_TYPES[r.loop]}: "
              f"{r.wrong_loop[:5]}", file=sys.stderr)
    return 1 if bad or diff else 0


if __name__ == "__main__":
    sys.exit(main())
