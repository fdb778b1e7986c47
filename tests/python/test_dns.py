"""getaddrinfo/getnameinfo: the same answers as the socket module."""

import socket

import pytest

from _support import run


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", None])
def test_getaddrinfo_matches_socket_module(loop, host):
    expected = socket.getaddrinfo(host, 8080, socket.AF_INET, socket.SOCK_STREAM)
    got = run(loop, loop.getaddrinfo(host, 8080, family=socket.AF_INET, type=socket.SOCK_STREAM))
    assert got == expected


def test_getaddrinfo_unknown_host_raises_gaierror(loop):
    with pytest.raises(socket.gaierror):
        run(loop, loop.getaddrinfo("no-such-host.invalid", 80))


def test_getnameinfo(loop):
    expected = socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    got = run(loop, loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
    assert got == expected


def test_numeric_host_needs_no_executor(sl):
    loop = sl.new_event_loop()
    try:
        run(loop, loop.getaddrinfo("::1" if socket.has_ipv6 else "127.0.0.1", 80))
        assert loop._default_executor is None
    finally:
        loop.close()
