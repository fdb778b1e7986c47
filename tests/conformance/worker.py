"""Child process of the conformance run: one bound class, some of its tests.

    python worker.py LOOP KEY PROGRESS_FILE TIMEOUT  (method names on stdin, one a line)

Writes ``start <method>`` before and ``done <method> <outcome> <json detail>``
after each test to PROGRESS_FILE (line-buffered, flushed), so the parent knows
which test was running when the child crashed or hung.  Everything the tests
print goes to this process's stdout/stderr, which the parent keeps as a log.
"""

import faulthandler
import json
import os
import sys
import traceback
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loops  # noqa: E402
import suites  # noqa: E402


class ProgressResult(unittest.TestResult):
    """Reports each test's outcome to the progress file as it happens."""

    def __init__(self, out, timeout):
        super().__init__()
        self._out = out
        self._timeout = timeout
        self._outcome = None

    def _write(self, *fields):
        self._out.write(" ".join(fields) + "\n")
        self._out.flush()

    def startTest(self, test):
        super().startTest(test)
        self._outcome = ("pass", "")
        # A traceback of the stuck test lands in the log before the parent
        # kills us.
        faulthandler.dump_traceback_later(max(1.0, self._timeout - 1.0), exit=False)
        self._write("start", test._testMethodName)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        outcome, detail = self._outcome
        self._write("done", test._testMethodName, outcome, json.dumps(detail))

    def _set(self, outcome, detail):
        # A failing cleanup after a failure keeps the first, more telling reason.
        if self._outcome is None or self._outcome[0] in ("pass", "skip"):
            self._outcome = (outcome, detail)

    @staticmethod
    def _summary(err):
        exc_type, exc, tb = err
        lines = traceback.format_exception(exc_type, exc, tb)
        return "".join(lines)[-4000:]

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._set("error", self._summary(err))
        else:
            # setUpClass/tearDownClass/module fixtures: an _ErrorHolder.
            self._write("fixture", json.dumps(str(test) + "\n" + self._summary(err)))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set("fail", self._summary(err))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set("fail" if failed else "error", f"{subtest}\n" + self._summary(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set("skip", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set("xfail", self._summary(err))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set("fail", "unexpected success")


def main():
    loop_name, key, progress_path, timeout = sys.argv[1:5]
    methods = [line.strip() for line in sys.stdin if line.strip()]
    faulthandler.enable()  # a crashing test leaves its traceback in the log
    import asyncio
    asyncio.set_event_loop_policy(None)
    with open(progress_path, "a", buffering=1) as out:
        try:
            cls = suites.bind(key, loop_name, loops.factory(loop_name))
        except Exception:
            out.write("fixture " + json.dumps("binding failed\n" + traceback.format_exc()) + "\n")
            return 3
        suite = unittest.TestSuite(cls(m) for m in methods)
        suite.run(ProgressResult(out, float(timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
