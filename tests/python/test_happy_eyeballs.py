"""create_connection() over several addresses: happy eyeballs (staggered,
overlapping attempts; the first connected socket wins), interleaving by
address family, the errors when every attempt fails (one error, 'Multiple
exceptions: ...', all_errors' ExceptionGroup), local_addr tried address by
address, and cancellation.

The host names are resolved by a table patched onto the loop instance
(``loop.getaddrinfo``) and every attempt is recorded by wrapping
``loop.sock_connect``: asyncio's loop and shardloop both go through these
two, so the order of attempts is observable on both and must be the same.
The sockets and connections are real (loopback).  An address that never
answers is a listener whose accept queue is full: the kernel drops the
SYNs, so a connect there stays pending for minutes.  No test asserts on
elapsed time; the run bound only turns "waited for the dead address"
into a failure.
"""

import asyncio
import contextlib
import errno
import select
import socket

import pytest

from _support import HAVE_IPV6, PY312, PY313, is_shardloop, run, same_as_asyncio

requires_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
requires_py312 = pytest.mark.skipif(not PY312, reason="all_errors is 3.12+")


# ---------------------------------------------------------------- helpers


def info(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)


def closed_addresses(*hosts):
    """Addresses nothing listens on (connecting is refused), one per host,
    all different: bound together, so the kernel cannot hand out one port
    twice."""
    with contextlib.ExitStack() as stack:
        out = []
        for host in hosts:
            s = stack.enter_context(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET))
            s.bind((host, 0))
            out.append(s.getsockname()[:2])
        return out


def closed_address(host="127.0.0.1"):
    return closed_addresses(host)[0]


def dead_address(socks):
    """A listener whose accept queue is full: connects to it hang."""
    lst = socks.add(socket.socket())
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    address = lst.getsockname()
    for _ in range(8):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(address)
        _, writable, _ = select.select([], [c], [], 0.5)
        if not writable:
            c.close()
            return address
        socks.add(c)  # took a place in the queue; keep it there
    pytest.skip("could not fill a listener's accept queue")


def resolve_with(loop, table):
    """Resolve the names in *table* (name -> addresses) on this loop instance."""
    real = loop.getaddrinfo

    async def getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        if host in table:
            return [info(a) for a in table[host]]
        return await real(host, port, family=family, type=type, proto=proto, flags=flags)

    loop.getaddrinfo = getaddrinfo


class Attempt:
    def __init__(self, sock, address, others_pending):
        self.sock = sock
        self.address = address
        self.others_pending = others_pending  # earlier attempts still connecting
        self.done = False


def record_attempts(loop):
    attempts = []
    real = loop.sock_connect

    async def sock_connect(sock, address):
        attempt = Attempt(sock, address, [not a.done for a in attempts])
        attempts.append(attempt)
        try:
            return await real(sock, address)
        finally:
            attempt.done = True

    loop.sock_connect = sock_connect
    return attempts


def describe(exc):
    if isinstance(exc, BaseExceptionGroup):
        return (type(exc).__name__, exc.message, [describe(e) for e in exc.exceptions])
    return (type(exc).__name__, getattr(exc, "errno", None), str(exc))


# ============================================================ happy eyeballs


def test_happy_eyeballs_connects_while_the_first_address_hangs(loop, socks):
    dead = dead_address(socks)
    lst = socks.listener()
    live = lst.getsockname()

    async def main():
        resolve_with(loop, {"dual.test": [dead, live]})
        attempts = record_attempts(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, "dual.test", 80,
                                             happy_eyeballs_delay=0.05)
        peer, _ = await loop.sock_accept(lst)
        socks.add(peer)
        assert tr.get_extra_info("peername") == live
        assert peer.getpeername() == tr.get_extra_info("sockname")
        assert [a.address for a in attempts] == [dead, live]
        assert attempts[1].others_pending == [True]  # the attempts overlapped
        assert attempts[0].sock.fileno() == -1  # the loser is closed
        assert attempts[1].sock.fileno() != -1
        tr.close()

    run(loop, main(), 20)  # a connect to `dead` would hang for minutes


def test_happy_eyeballs_starts_the_next_attempt_when_one_fails(loop, socks):
    lst = socks.listener()
    refused = closed_address()

    async def main():
        resolve_with(loop, {"dual.test": [refused, lst.getsockname()]})
        attempts = record_attempts(loop)
        # With a delay of minutes, only "the first one failed" can start the second.
        tr, _ = await loop.create_connection(asyncio.Protocol, "dual.test", 80,
                                             happy_eyeballs_delay=300)
        assert [a.address for a in attempts] == [refused, lst.getsockname()]
        assert attempts[1].others_pending == [False]
        assert attempts[0].sock.fileno() == -1
        socks.add((await loop.sock_accept(lst))[0])
        tr.close()

    run(loop, main(), 20)


def test_happy_eyeballs_closes_every_loser(loop, socks):
    """Two addresses that both accept, the second started at once: one
    connection is kept, the other socket is closed."""
    a, b = socks.listener(), socks.listener()

    async def main():
        resolve_with(loop, {"dual.test": [a.getsockname(), b.getsockname()]})
        attempts = record_attempts(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, "dual.test", 80,
                                             happy_eyeballs_delay=0)
        assert len(attempts) in (1, 2)
        kept = [t for t in attempts if t.sock.fileno() != -1]
        assert len(kept) == 1
        assert tr.get_extra_info("peername") == kept[0].address
        tr.close()

    run(loop, main(), 20)


@pytest.mark.parametrize("delay", [None, 0.05])
def test_cancelled_create_connection_closes_its_attempts(loop, socks, delay):
    dead1, dead2 = dead_address(socks), dead_address(socks)

    async def main():
        resolve_with(loop, {"dead.test": [dead1, dead2]})
        attempts = record_attempts(loop)
        task = asyncio.ensure_future(loop.create_connection(
            asyncio.Protocol, "dead.test", 80, happy_eyeballs_delay=delay))
        while len(attempts) < (1 if delay is None else 2):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(5):  # the attempts' tasks end on the next iterations
            await asyncio.sleep(0)
        assert [t.sock.fileno() for t in attempts] == [-1] * len(attempts)

    run(loop, main(), 20)


# ============================================================ interleave

V6 = ["::1"] * 3
V4 = ["127.0.0.1"] * 2


@requires_ipv6
@pytest.mark.parametrize("order, delay, interleave, expected", [
    ("66644", None, None, "66644"),
    ("66644", None, 0, "66644"),
    ("66644", None, 1, "64646"),
    ("66644", None, 2, "66464"),
    ("66644", 0.01, None, "64646"),  # happy eyeballs interleaves by default
    ("66644", 0.01, 0, "66644"),
    ("66644", 0.01, 3, "66644"),
    ("46664", None, 1, "46466"),  # families in the order first seen
    ("46664", None, 5, "44666"),
])
def test_interleave_order_of_attempts(loop, order, delay, interleave, expected):
    hosts = {"6": iter(V6), "4": iter(V4)}
    addresses = closed_addresses(*(next(hosts[c]) for c in order))

    async def scenario(lp):
        resolve_with(lp, {"many.test": addresses})
        attempts = record_attempts(lp)
        with pytest.raises(OSError) as info_:
            await lp.create_connection(asyncio.Protocol, "many.test", 80,
                                       happy_eyeballs_delay=delay, interleave=interleave)
        tried = [addresses.index(t.address) for t in attempts]
        return tried, describe(info_.value)

    tried, error = same_as_asyncio(loop, scenario)
    assert "".join(order[i] for i in tried) == expected
    assert sorted(tried) == list(range(len(addresses)))
    assert error[0] == "OSError" and error[2].startswith("Multiple exceptions: ")


# ============================================================ errors


@pytest.mark.parametrize("delay", [None, 0.01])
@pytest.mark.parametrize("same", [True, False], ids=["same-error", "different-errors"])
def test_the_error_when_every_attempt_fails(loop, delay, same):
    """One error said twice is raised as it is; different ones are
    combined into 'Multiple exceptions: ...'."""
    a, b = closed_addresses("127.0.0.1", "127.0.0.1")
    if same:
        b = a

    async def scenario(lp):
        resolve_with(lp, {"two.test": [a, b]})
        with pytest.raises(OSError) as info_:
            await lp.create_connection(asyncio.Protocol, "two.test", 80, happy_eyeballs_delay=delay)
        return describe(info_.value)

    name, code, message = same_as_asyncio(loop, scenario)
    refused = "[Errno %d] Connect call failed %r"
    if same:
        assert (name, code, message) == ("ConnectionRefusedError", errno.ECONNREFUSED,
                                         refused % (errno.ECONNREFUSED, a))
    else:
        assert (name, code) == ("OSError", None)
        assert message == "Multiple exceptions: %s, %s" % (refused % (errno.ECONNREFUSED, a),
                                                           refused % (errno.ECONNREFUSED, b))


@requires_py312
@pytest.mark.parametrize("delay", [None, 0.01])
def test_all_errors_gives_every_error(loop, delay):
    a, b = closed_addresses("127.0.0.1", "127.0.0.1")

    async def scenario(lp):
        resolve_with(lp, {"two.test": [a, b, a]})
        with pytest.raises(ExceptionGroup) as info_:
            await lp.create_connection(asyncio.Protocol, "two.test", 80,
                                       happy_eyeballs_delay=delay, all_errors=True)
        return describe(info_.value)

    name, message, errors = same_as_asyncio(loop, scenario)
    assert message == "create_connection failed"
    assert [e[2] for e in errors] == ["[Errno 111] Connect call failed %r" % (x,) for x in (a, b, a)]


# ============================================================ local_addr


def test_local_addr_tries_each_address_until_one_binds(loop, socks):
    lst = socks.listener()
    busy = socks.listener().getsockname()

    async def main():
        resolve_with(loop, {"local.test": [busy, ("127.0.0.1", 0)]})
        tr, _ = await loop.create_connection(asyncio.Protocol, *lst.getsockname(),
                                             local_addr=("local.test", 0))
        peer, _ = await loop.sock_accept(lst)
        socks.add(peer)
        sockname = tr.get_extra_info("sockname")
        assert sockname[0] == "127.0.0.1" and sockname[1] not in (0, busy[1])
        assert peer.getpeername() == sockname
        tr.close()

    run(loop, main())


def test_local_addr_none_binds(loop, socks):
    busy1 = socks.listener().getsockname()
    busy2 = socks.listener().getsockname()
    remote = socks.listener().getsockname()

    async def scenario(lp):
        resolve_with(lp, {"local.test": [busy1, busy2], "one.test": [busy1]})
        results = []
        for local in ("local.test", "one.test"):
            with pytest.raises(OSError) as info_:
                await lp.create_connection(asyncio.Protocol, *remote, local_addr=(local, 0))
            results.append(describe(info_.value))
        return results

    several, one = same_as_asyncio(loop, scenario)
    # 3.13 keeps the "[errno N]" of the bind error in the message.
    detail = "[errno %d] address already in use" % errno.EADDRINUSE if PY313 else "address already in use"
    bind_error = "[Errno %d] error while attempting to bind on address %r: " + detail
    assert several == ("OSError", None, "Multiple exceptions: %s, %s" % (
        bind_error % (errno.EADDRINUSE, busy1), bind_error % (errno.EADDRINUSE, busy2)))
    assert one[:2] == ("OSError", errno.EADDRINUSE)
    assert one[2].startswith(bind_error % (errno.EADDRINUSE, busy1))


def test_local_addr_of_no_matching_family(loop, socks):
    remote = socks.listener().getsockname()

    async def scenario(lp):
        resolve_with(lp, {"local6.test": [("::1", 0)]})
        with pytest.raises(OSError) as info_:
            await lp.create_connection(asyncio.Protocol, *remote, local_addr=("local6.test", 0))
        return describe(info_.value)

    name, _, message = same_as_asyncio(loop, scenario)
    assert message == "no matching local address with family=%r found" % (socket.AF_INET,)


def test_local_addr_with_happy_eyeballs(loop, socks):
    lst = socks.listener()
    busy = socks.listener().getsockname()
    dead = dead_address(socks)

    async def main():
        resolve_with(loop, {"dual.test": [dead, lst.getsockname()],
                            "local.test": [busy, ("127.0.0.1", 0)]})
        tr, _ = await loop.create_connection(asyncio.Protocol, "dual.test", 80,
                                             local_addr=("local.test", 0), happy_eyeballs_delay=0.05)
        peer, _ = await loop.sock_accept(lst)
        socks.add(peer)
        assert peer.getpeername() == tr.get_extra_info("sockname")
        assert tr.get_extra_info("sockname")[1] != busy[1]
        tr.close()

    run(loop, main(), 20)


# ------------------------------------------------ no cycle through the error


def _frames_holding(exc):
    """The `function.local` names, in the frames of exc's own traceback,
    that lead back to exc: each is a reference cycle that keeps the error,
    every frame of its traceback and their locals alive until the collector
    runs (anyio's test_happy_eyeballs_refcycles checks the same)."""
    def leads_to(value, depth):
        if value is exc:
            return True
        if depth == 0:
            return False
        if isinstance(value, (list, tuple, set, frozenset)):
            return any(leads_to(v, depth - 1) for v in value)
        if isinstance(value, dict):
            return any(leads_to(v, depth - 1) for v in value.values())
        if isinstance(value, asyncio.Future):
            return value.done() and not value.cancelled() and value.exception() is exc
        return False

    holders = []
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        holders += ["%s.%s" % (frame.f_code.co_name, name)
                    for name, value in frame.f_locals.items() if leads_to(value, 3)]
        tb = tb.tb_next
    return holders


@pytest.mark.parametrize("delay", [None, 0.01])
def test_a_refused_connection_leaves_its_error_in_no_cycle(request, loop, delay):
    if delay is not None and not is_shardloop(loop):
        # 3.11's staggered_race keeps the errors in a closure (run_one_coro)
        # and create_connection keeps its list: not on every Python.
        request.applymarker(pytest.mark.xfail(reason="asyncio's staggered_race cycle on older Pythons"))
    address = closed_address()

    async def refused():
        try:
            await loop.create_connection(asyncio.Protocol, *address, happy_eyeballs_delay=delay)
        except OSError as exc:
            return exc  # the `as` name is gone once the except block ends

    exc = run(loop, refused())
    assert isinstance(exc, OSError), exc
    assert _frames_holding(exc) == []
