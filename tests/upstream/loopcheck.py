"""pytest plugin for `make upstream`: puts another project's suite on one loop
and records which loop its tests actually ran on.

Environment (set by tests/upstream/run.py):
  SHARDLOOP_UPSTREAM_LOOP    asyncio | uvloop | shardloop
  SHARDLOOP_UPSTREAM_SUITE   anyio | aiohttp | uvicorn
  SHARDLOOP_UPSTREAM_REPORT  where the JSON record goes at the end

How each suite gets the loop:
* anyio and aiohttp: asyncio's policy makes the intended loop, so code
  calling asyncio.new_event_loop() or asyncio.run() without a factory gets
  it (not uvicorn: its test_asyncio_run__default_loop_factory asserts that
  a plain asyncio.run() gets asyncio's own loop);
* anyio and uvicorn (both run async tests through anyio's pytest plugin):
  the `anyio_backend` fixture's value gains loop_factory=new_event_loop;
  anyio's own parametrisations with another loop factory (uvloop, eager
  tasks) and trio are deselected, so each test runs once per loop;
* aiohttp: its plugin's `pyloop` factory is asyncio.new_event_loop, i.e.
  the policy above;
* uvicorn: Config(loop="asyncio" | "auto") becomes `--loop
  shardloop:new_event_loop` (uvloop:new_event_loop, or asyncio), except in
  the tests of that name-to-factory mapping itself.

The check: every loop made here schedules a probe that, once the loop runs,
records type(asyncio.get_running_loop()) for the test in progress; aiohttp's
`loop` fixture is recorded too; loops of asyncio's own classes created by
the tests themselves on another run are counted. run.py fails a run whose
tests were not seen on the intended loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os

import pytest

LOOP = os.environ.get("SHARDLOOP_UPSTREAM_LOOP", "asyncio")
SUITE = os.environ.get("SHARDLOOP_UPSTREAM_SUITE", "")
REPORT = os.environ.get("SHARDLOOP_UPSTREAM_REPORT")

# uvicorn's --loop value for each loop ("asyncio" keeps uvicorn's own).
UVICORN_LOOP = {"asyncio": "asyncio", "uvloop": "uvloop:new_event_loop", "shardloop": "shardloop:new_event_loop"}
# uvicorn tests of its loop-name mapping: they assert what "asyncio" maps to.
UVICORN_KEEP_LOOP = ("tests/test_config.py::test_get_loop_factory",)

_current = "<collection>"
_seen: dict[str, set[str]] = {}        # test -> running-loop types probed
_fixture: dict[str, set[str]] = {}     # test -> type of aiohttp's loop fixture
_foreign: dict[str, int] = {}          # test -> asyncio loops its code made itself


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _probe() -> None:
    _seen.setdefault(_current, set()).add(_type_name(asyncio.get_running_loop()))


def _make() -> asyncio.AbstractEventLoop:
    if LOOP == "shardloop":
        import shardloop
        return shardloop.new_event_loop()
    if LOOP == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.SelectorEventLoop()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The intended loop, with the probe queued for its first iteration."""
    loop = _make()
    loop.call_soon(_probe)
    return loop


class Policy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc, valid-type]
    _loop_factory = staticmethod(new_event_loop)


def _install_policy() -> None:
    if not isinstance(asyncio.get_event_loop_policy(), Policy):
        asyncio.set_event_loop_policy(Policy())


def _count_foreign_asyncio_loops() -> None:
    # On the uvloop and shardloop runs, asyncio loops can only come from a
    # test constructing one by class; count them so the report shows it.
    base = asyncio.base_events.BaseEventLoop
    original = base.__init__

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _foreign[_current] = _foreign.get(_current, 0) + 1
        original(self, *args, **kwargs)

    base.__init__ = __init__


def _patch_uvicorn_config() -> None:
    from uvicorn import config as uvicorn_config

    original = uvicorn_config.Config.__init__

    @functools.wraps(original)  # its test_run_match_config_params reads the signature
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        if self.loop in ("asyncio", "auto") and not _current.startswith(UVICORN_KEEP_LOOP):
            self.loop = UVICORN_LOOP[LOOP]

    uvicorn_config.Config.__init__ = __init__


USE_POLICY = SUITE != "uvicorn"


# blockbuster (anyio's and aiohttp's suites run under it) allows these calls
# on the loop thread only where asyncio's own loop makes them, naming
# asyncio's files and functions (os.sendfile in sock_sendfile, os.stat and
# os.unlink around create_unix_server's socket file). shardloop makes the
# same calls in its own functions: they get the same allowance, nothing more.
SHARDLOOP_BLOCKING_LIKE_ASYNCIO = {
    "os.sendfile": ("shardloop/_fdio.py", {"step"}),
    "os.stat": ("shardloop/_unix.py", {"_remove_stale_socket_file", "_socket_file", "_unlink_if_same"}),
    "os.remove": ("shardloop/_unix.py", {"_remove_stale_socket_file"}),
    "os.unlink": ("shardloop/_unix.py", {"_unlink_if_same"}),
}


def _blockbuster_rules() -> None:
    try:
        from blockbuster import blockbuster as bb_module
    except ImportError:
        return
    original = bb_module.BlockBuster.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        for name, (filename, functions) in SHARDLOOP_BLOCKING_LIKE_ASYNCIO.items():
            if name in self.functions:
                self.functions[name].can_block_in(filename, functions)

    bb_module.BlockBuster.__init__ = __init__


def pytest_configure(config: pytest.Config) -> None:
    if LOOP == "shardloop":
        _blockbuster_rules()
    if USE_POLICY:
        _install_policy()
    if LOOP != "asyncio":
        _count_foreign_asyncio_loops()
    if SUITE == "uvicorn":
        _patch_uvicorn_config()


def _plain_asyncio(value: object) -> bool:
    if value == "asyncio":
        return True
    return (isinstance(value, tuple) and len(value) == 2 and value[0] == "asyncio"
            and "loop_factory" not in value[1])


def _with_factory(value: object) -> object:
    if value == "asyncio":
        return ("asyncio", {"loop_factory": new_event_loop})
    if _plain_asyncio(value):
        return ("asyncio", {**value[1], "loop_factory": new_event_loop})  # type: ignore[index]
    return value


def _wrap_backend_fixture(fixturedef) -> None:  # type: ignore[no-untyped-def]
    func = fixturedef.func
    if getattr(func, "_loopcheck", False):
        return

    def anyio_backend(*args, **kwargs):  # type: ignore[no-untyped-def]
        return _with_factory(func(*args, **kwargs))

    anyio_backend._loopcheck = True  # type: ignore[attr-defined]
    fixturedef.func = anyio_backend


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "anyio_backend" in callspec.params \
                and not _plain_asyncio(callspec.params["anyio_backend"]):
            drop.append(item)
            continue
        info = getattr(item, "_fixtureinfo", None)
        for fixturedef in (info.name2fixturedefs.get("anyio_backend", ()) if info else ()):
            _wrap_backend_fixture(fixturedef)
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _current
    _current = item.nodeid
    if USE_POLICY:
        _install_policy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    loop = getattr(item, "funcargs", {}).get("loop")
    if isinstance(loop, asyncio.AbstractEventLoop):
        _fixture.setdefault(item.nodeid, set()).add(_type_name(loop))
    yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not REPORT:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    path = f"{REPORT}.{worker}" if worker else REPORT
    with open(path, "w") as out:
        json.dump({"loop": LOOP, "suite": SUITE,
                   "running_loops": {k: sorted(v) for k, v in _seen.items()},
                   "fixture_loops": {k: sorted(v) for k, v in _fixture.items()},
                   "foreign_asyncio_loops": _foreign}, out, indent=1, sort_keys=True)
