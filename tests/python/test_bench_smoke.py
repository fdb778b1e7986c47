"""perf/bench.py --quick runs end to end and writes the documented JSON.

A harness check, not a measurement: no figure is compared with anything.
Parts whose tools are missing (valgrind, wrk, g++, go, node, .venv-3.13t,
the native binaries in build-native, which --quick does not build) must be
reported as skipped, with a reason, rather than fail the run.
"""

import json
import os
import subprocess
import sys

import pytest

from _support import requires_shardloop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "perf", "bench.py")
LOOPS = ("shardloop", "uvloop", "rloop", "asyncio")
# Columns of the I/O parts: shardloop's io_uring backend is one more.
IO_COLUMNS = LOOPS + ("shardloop_uring",)

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
    assert set(doc["parts"]) == {"micro", "instructions", "echo", "http", "tls", "shards", "native"}
    assert doc["pending"] == {}
    for name, part in doc["parts"].items():
        assert {"title", "unit", "higher_is_better", "status", "results"} <= set(part), name
        if part["status"] == "skipped":
            assert part["reason"], name
            continue
        # Cells are keyed by loop, or by the part's own columns (servers,
        # shard counts) when it has them.
        assert_cells(part, part.get("columns", IO_COLUMNS if name == "echo" else LOOPS), name)


def assert_cells(table, columns, name):
    for bench, row in table["results"].items():
        for column, cell in row.items():
            assert column in columns, (name, bench, column)
            # Exactly one of: a figure, a reason for skipping, an error.
            assert len({"value", "skipped", "error"} & set(cell)) == 1, (name, bench, column, cell)


def assert_server_cell(cell):
    assert cell["requests"] > 0
    assert set(cell["latency_us"]) >= {"p50", "p99", "p99.9"}
    assert set(cell["cpu_us_per_request"]) == {"user", "sys"}


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
                assert_server_cell(cell)
            else:
                assert "skipped" in cell, (bench, loop, cell)  # an error would have failed test_exits_cleanly


def test_shards_part(quick_run):
    _, result, _ = quick_run
    shards = json.loads(result.read_text())["parts"]["shards"]
    if shards["status"] == "skipped":
        pytest.skip(shards["reason"])
    assert shards["columns"] == ["1 shard", "2 shards"]
    assert shards["ratios"] == [["2 shards", "1 shard"]]
    # This interpreter always has a row; .venv-3.13t's has one or a note.
    this = [row for bench, row in shards["results"].items() if bench.startswith("echo, this: CPython")]
    assert len(this) == 1
    for row in shards["results"].values():
        for column, cell in row.items():
            assert cell["shards"] == int(column.split()[0])
            if "value" in cell:
                assert_server_cell(cell)
                assert len(cell["connections_per_shard"]) == cell["shards"]
                assert sum(cell["connections_per_shard"]) > 0
                if cell["shards"] > 1 and "value" in row["1 shard"]:
                    assert cell["vs_1_shard"] == pytest.approx(cell["value"] / row["1 shard"]["value"])
    cross = shards["cross_shard"]
    assert cross["columns"][-1] == "native C++"
    assert_cells(cross, cross["columns"], "shards cross_shard")
    assert set(cross["units"]) >= set(cross["results"])
    this_column = cross["columns"][0]
    assert this_column.startswith("this: CPython")
    for bench in ("submit_to (runtime)", "submit_to (inbox)", "submit_to x64 (runtime)"):
        assert cross["results"][bench][this_column]["value"] > 0, bench
    native = {bench: row["native C++"] for bench, row in cross["results"].items() if "native C++" in row}
    assert set(native) >= {"Runtime::post"}
    if "value" in native["Runtime::post"]:
        assert native["wake-up latency p99"]["value"] >= native["wake-up latency p50"]["value"] > 0


def test_native_part(quick_run):
    _, result, _ = quick_run
    native = json.loads(result.read_text())["parts"]["native"]
    if native["status"] == "skipped":
        # --quick builds nothing: a tree without build-native says so.
        assert "build-native" in native["reason"] or "failed" in native["reason"], native["reason"]
        pytest.skip(native["reason"])
    assert native["columns"][:2] == ["shardloop native", "plain C epoll"]
    assert set(native["columns"]) == {"shardloop native", "plain C epoll", "Go", "Node.js"}
    assert native["ratios"] == [["shardloop native", c] for c in native["columns"][1:]]
    echo = native["results"]["echo 1KiB"]
    assert set(echo) == set(native["columns"])
    for column in ("shardloop native", "plain C epoll"):
        assert_server_cell(echo[column])
    for column in ("Go", "Node.js"):
        assert "value" in echo[column] or echo[column]["skipped"].startswith(column), echo[column]
    http = native["results"]["http hello (wrk)"]["shardloop native"]
    if "value" in http:
        assert_server_cell(http)
    else:
        assert "wrk" in http["skipped"]


def test_report_files(quick_run):
    _, _, out = quick_run
    assert (out / "latest.md").read_text().startswith("# shardloop benchmarks")
    json.loads((out / "latest.json").read_text())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "micro.png").stat().st_size > 0
    doc = json.loads((out / "latest.json").read_text())
    for name in ("shards", "native"):
        if doc["parts"][name]["status"] == "ran":
            assert (out / f"{name}.png").stat().st_size > 0, name
