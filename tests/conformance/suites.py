"""Bind CPython's loop-independent test_asyncio mixins to a loop factory.

CPython builds its per-loop TestCase classes by combining a mixin with a
``create_event_loop()`` (or ``new_loop()``) method; we build the same classes
for each loop we compare.  A test's id names the CPython class that defines
it, e.g. ``test_events.EventLoopTestsMixin.test_add_reader``, so ids are the
same for every loop and stable across our bindings.

For asyncio's own loop the subprocess-related bindings are CPython's own
concrete classes (child watcher included), so the reference column is what
CPython's own run reports.  Other loops get no child watcher: like uvloop,
they are expected to reap their children themselves.
"""

import collections
import importlib
import sys
import unittest

from test.test_asyncio import utils as test_utils

Test = collections.namedtuple("Test", "id key method")

# key: (module in test.test_asyncio, mixin class names, how the loop is made)
SPECS = {
    "EventLoopTests": ("test_events", ("EventLoopTestsMixin", "SubprocessTestsMixin"), "create_event_loop"),
    "SubprocessTests": ("test_subprocess", ("SubprocessMixin",), "subprocess"),
    "SockTests": ("test_sock_lowlevel", ("BaseSockTestsMixin",), "create_event_loop"),
    "SendfileTests": ("test_sendfile", ("SendfileMixin", "SockSendfileMixin"), "create_event_loop"),
    "BufferedProtocolTests": ("test_buffered_proto", ("BaseTestBufferedProtocol",), "new_loop"),
    "StartServerTests": ("test_server", ("BaseStartServer",), "new_loop"),
    "StartTLSTests": ("test_sslproto", ("BaseStartTLS",), "new_loop"),
    "SSLTests": ("test_ssl", ("TestSSL",), "own_setup"),
    "StreamTests": ("test_streams", ("StreamTests",), "own_setup"),
}

# IsolatedAsyncioTestCase takes a loop factory from 3.13 on.
if hasattr(unittest.IsolatedAsyncioTestCase, "loop_factory"):
    SPECS["Server2Tests"] = ("test_server", ("TestServer2",), "isolated")
    SPECS["UnixServerCleanupTests"] = ("test_server", ("UnixServerCleanupTests",), "isolated")


# For asyncio's loop, CPython's concrete classes where they set up more than
# the loop (a child watcher); the others bind the mixins as for any loop.
REFERENCE_CLASSES = {"EventLoopTests": "EPollEventLoopTests",
                     "SubprocessTests": "SubprocessThreadedWatcherTests"}


def _module(name):
    return importlib.import_module("test.test_asyncio." + name)


class _LoopCleanup:
    """test_utils.TestCase.close_loop reads asyncio's private _default_executor;
    loops without it get the same shutdown through the public API."""

    @staticmethod
    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return test_utils.TestCase.close_loop(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def bind(key, loop_name, factory):
    """The unittest.TestCase class running spec *key* on loops from *factory*."""
    module_name, mixin_names, kind = SPECS[key]
    module = _module(module_name)
    mixins = tuple(getattr(module, name) for name in mixin_names)
    reference = loop_name == "asyncio"
    namespace = {"__module__": __name__, "__qualname__": f"{key}[{loop_name}]"}

    concrete = getattr(module, REFERENCE_CLASSES.get(key, ""), None)
    if reference and concrete is not None:
        # CPython's own class for its default loop, child watcher included.
        bases = (concrete,)
    elif kind == "create_event_loop":
        namespace["create_event_loop"] = lambda self: factory()
        bases = (_LoopCleanup,) + mixins + (test_utils.TestCase,)
    elif kind == "subprocess":
        def setUp(self):
            super(cls, self).setUp()
            self.loop = factory()
            self.set_event_loop(self.loop)
        namespace["setUp"] = setUp
        bases = (_LoopCleanup,) + mixins + (test_utils.TestCase,)
    elif kind == "new_loop":
        namespace["new_loop"] = lambda self: factory()
        bases = mixins + (unittest.TestCase,)
    elif kind == "own_setup":
        # Concrete classes whose setUp makes the loop with asyncio.new_event_loop().
        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = factory()
            self.set_event_loop(self.loop)
        namespace["setUp"] = setUp
        namespace["new_loop"] = lambda self: factory()
        bases = (_LoopCleanup,) + mixins
    elif kind == "isolated":
        namespace["loop_factory"] = staticmethod(factory)
        bases = mixins
    else:
        raise AssertionError(kind)
    cls = type(f"{key}_{loop_name}", bases, namespace)
    return cls


def collect(keys=None):
    """Every test of the given specs (all by default), as Test tuples."""
    import asyncio
    tests = []
    for key in keys or SPECS:
        # The generic binding, so ids never depend on CPython's concrete classes.
        cls = bind(key, "generic", asyncio.new_event_loop)
        for method in unittest.TestLoader().getTestCaseNames(cls):
            owner = next(k for k in cls.__mro__ if method in k.__dict__)
            module_name = SPECS[key][0]
            tests.append(Test(f"{module_name}.{owner.__name__}.{method}", key, method))
    return tests


def python_tag():
    return "CPython %d.%d" % sys.version_info[:2]
