"""Differential fuzzing (issue 17): Hypothesis draws lists of transport and
loop operations (write, writelines, write_eof, pause/resume_reading,
set_write_buffer_limits, close, abort, bad writes; the peer sending, ending,
closing, resetting or stopping reading; call_soon/call_later/cancel;
sock_sendall/sock_recv/sock_recv_into) and _differential.py plays each list on asyncio's loop and
on shardloop with each I/O backend. The per-step protocol-callback trace
and every byte stream must be the same.

`make test` runs a fixed, derandomized set of 25 examples; `make fuzz` runs SHARDLOOP_FUZZ_EXAMPLES examples from a
random seed, which Hypothesis prints when an example fails
(reproduce with `pytest --hypothesis-seed=N`).
"""

import asyncio
import faulthandler
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _differential import play
from _support import requires_shardloop, shardloop

LONG = int(os.environ.get("SHARDLOOP_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG or 25
EXAMPLE_BOUND = 60  # seconds; a step settles within _differential.STEP_BOUND
VERBOSE = bool(os.environ.get("SHARDLOOP_FUZZ_VERBOSE"))  # each scenario to stderr before it runs

pytestmark = [
    requires_shardloop,
    # Both backends run here, side by side; the io_uring and sanitized
    # reruns of tests/python would repeat the same examples more slowly.
    pytest.mark.skipif(bool(os.environ.get("SHARDLOOP_SANITIZED")) or "SHARDLOOP_IO_URING" in os.environ,
                       reason="differential fuzzing runs once, in the plain test-python run, on both backends"),
]

small = st.integers(1, 4096)
limit_value = st.sampled_from([None, 0, 1, 1024, 16384, 65536, -1])

OP = st.one_of(
    st.tuples(st.just("write"), small),
    st.tuples(st.just("write_big")),
    st.tuples(st.just("writelines"), st.lists(st.integers(0, 2048), min_size=0, max_size=4)),
    st.tuples(st.just("write_bad"), st.sampled_from(["str", "int", "list"])),
    st.tuples(st.just("write_eof")),
    st.tuples(st.just("pause_reading")),
    st.tuples(st.just("resume_reading")),
    st.tuples(st.just("limits"), limit_value, limit_value),
    st.tuples(st.just("close")),
    st.tuples(st.just("abort")),
    st.tuples(st.just("peer_send"), small),
    st.tuples(st.just("peer_eof")),
    st.tuples(st.just("peer_reading"), st.booleans()),
    st.tuples(st.just("peer_close"), st.booleans()),  # True: with a RST
    st.tuples(st.just("callbacks"), st.lists(st.one_of(
        st.tuples(st.just("soon"), st.none()),
        st.tuples(st.just("later"), st.sampled_from([0, 0.001, 0.003, 0.02])),
        st.tuples(st.just("far"), st.none()),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
    ), min_size=1, max_size=8).map(tuple)),
    st.tuples(st.just("sock_sendall"), st.integers(1, 1 << 17)),
    st.tuples(st.just("sock_recv"), st.integers(1, 8192)),
    st.tuples(st.just("sock_recv_into"), st.integers(1, 8192)),
    st.tuples(st.just("sock_peer_send"), small),
)

SCENARIO = st.tuples(
    st.lists(OP, min_size=1, max_size=20),
    st.booleans(),                          # eof_received() keeps the connection open
    st.sampled_from([0, 0, 1, 7, 65536]),   # 0: Protocol, else a BufferedProtocol's buffer size
)

LOOPS = [
    ("shardloop-epoll", lambda: shardloop.new_event_loop(io_uring=False)),
    ("shardloop-io_uring", lambda: shardloop.new_event_loop(io_uring=True)),
]


def check_bytes(name, got, ref):
    for run in (got, ref):
        # Whatever else happens, the peer reads a prefix of what was written.
        assert run["written"].startswith(run["peer_bytes"]), "%s: the peer got bytes never written" % name
        assert run["sock_sent"].startswith(run["sock_peer_bytes"])
    if not (got["lossy"] or ref["lossy"]):
        assert got["peer_bytes"] == ref["peer_bytes"], (
            "%s: the peer got %d bytes, on asyncio %d" % (name, len(got["peer_bytes"]), len(ref["peer_bytes"])))
    assert got["client_bytes"] == ref["client_bytes"], (
        "%s: the protocol got %d bytes, on asyncio %d" % (name, len(got["client_bytes"]), len(ref["client_bytes"])))
    assert got["sock_peer_bytes"] == ref["sock_peer_bytes"]


def first_different_step(got, ref):
    for i, (a, b) in enumerate(zip(got, ref)):
        if a != b:
            return i, a, b
    return len(ref), got[len(ref):], ref[len(got):]


@settings(max_examples=EXAMPLES, derandomize=not LONG, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
@given(SCENARIO)
def test_same_trace_as_asyncio(scenario):
    ops, keep_open, buffered = scenario
    # The hang guard (tests/conftest.py) bounds each example, not the run.
    faulthandler.dump_traceback_later(EXAMPLE_BOUND, exit=True, file=sys.stderr)
    ref = play(asyncio.new_event_loop(), ops, keep_open, buffered)
    asyncio.set_event_loop(None)
    for name, factory in LOOPS:
        if VERBOSE:
            print(name, scenario, file=sys.stderr, flush=True)
        got = play(factory(), ops, keep_open, buffered)
        asyncio.set_event_loop(None)
        if got["steps"] != ref["steps"]:
            i, a, b = first_different_step(got["steps"], ref["steps"])
            raise AssertionError("%s differs from asyncio at step %d:\n  shardloop: %r\n  asyncio:   %r\n"
                                 "  scenario: %r" % (name, i, a, b, scenario))
        check_bytes(name, got, ref)
