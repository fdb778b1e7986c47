"""perf/bench.py --quick runs end to end and writes the documented JSON.

A harness check, not a measurement: no figure is compared with anything.
Parts whose tools are missing (valgrind, wrk, g++) must be reported as
skipped, with a reason, rather than fail the run.
"""

import json
import os
import subprocess
import sys

import pytest

from _support import requires_shardloop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "perf", "bench.py")
LOOPS = ("shardloop", "uvloop", "asyncio")

pytestmark = [
    requires_shardloop,
    # The sanitized run preloads ASan into every child (valgrind, wrk, g++
    # included) and would only time the sanitizer; the plain run covers it.
    pytest.mark.skipif(bool(os.environ.get("SHARDLOOP_SANITIZED")), reason="harness check runs in the plain build"),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = out / "result.json"
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", str(result), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    return proc, result, out


def test_exits_cleanly(quick_run):
    proc, _, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# shardloop benchmarks" in proc.stdout


def test_json_structure(quick_run):
    _, result, _ = quick_run
    doc = json.loads(result.read_text())
    assert doc["schema"] == 1
    assert doc["settings"]["quick"] is True
    assert list(doc["settings"]["loops"]) == list(LOOPS)
    for key in ("date", "cpu", "cores", "kernel", "python", "libuv (shardloop)"):
        assert key in doc["environment"]
    assert {"micro", "instructions", "echo", "http", "tls"} <= set(doc["parts"])
    assert set(doc["parts"]) | set(doc["pending"]) == {"micro", "instructions", "echo", "http", "tls",
                                                        "shards", "native"}
    for name, part in doc["parts"].items():
        assert {"title", "unit", "higher_is_better", "status", "results"} <= set(part), name
        if part["status"] == "skipped":
            assert part["reason"], name
            continue
        for bench, row in part["results"].items():
            for loop, cell in row.items():
                assert loop in LOOPS
                # Exactly one of: a figure, a reason for skipping, an error.
                assert len({"value", "skipped", "error"} & set(cell)) == 1, (name, bench, loop, cell)
    # Each pending part is named with the issue that brings it.
    assert not set(doc["pending"]) & set(doc["parts"])
    assert all("issue #" in why for why in doc["pending"].values())


def test_micro_has_shardloop_figures(quick_run):
    _, result, _ = quick_run
    micro = json.loads(result.read_text())["parts"]["micro"]
    assert set(micro["results"]) >= {"call_soon", "call_later", "call_soon_threadsafe", "tasks", "futures"}
    for bench, row in micro["results"].items():
        assert row["shardloop"]["value"] > 0, bench


def test_echo_cells_measured_or_explained(quick_run):
    _, result, _ = quick_run
    echo = json.loads(result.read_text())["parts"]["echo"]
    if echo["status"] == "skipped":
        pytest.skip(echo["reason"])
    for bench, row in echo["results"].items():
        for loop, cell in row.items():
            if "value" in cell:
                assert cell["requests"] > 0
                assert set(cell["latency_us"]) >= {"p50", "p99", "p99.9"}
                assert set(cell["cpu_us_per_request"]) == {"user", "sys"}
            else:
                assert "skipped" in cell, (bench, loop, cell)  # an error would have failed test_exits_cleanly


def test_report_files(quick_run):
    _, _, out = quick_run
    assert (out / "latest.md").read_text().startswith("# shardloop benchmarks")
    json.loads((out / "latest.json").read_text())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "micro.png").stat().st_size > 0
