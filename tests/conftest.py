"""What every pytest suite under tests/ shares: a bound on each test.

Tests use much smaller timeouts themselves (asyncio.wait_for / guard
timers); this bound only turns a hang (e.g. a loop that never wakes up) into
a dump of all tracebacks and the end of the run instead of a stuck job.  A
suite sets its own bound by overriding the ``hang_timeout`` fixture in its
conftest.py (tests/integration does).
"""

import faulthandler
import sys

import pytest


@pytest.fixture
def hang_timeout():
    """Seconds one test may take before the run is aborted."""
    return 120


@pytest.fixture(autouse=True)
def _hang_guard(hang_timeout):
    faulthandler.dump_traceback_later(hang_timeout, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
