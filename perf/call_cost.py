#!/usr/bin/env python3
"""What one call into shardloop._core costs through pybind11 and through a
raw CPython vectorcall function: the measurement behind writing the loop's
hot types (Loop, Handle, TimerHandle) against the C API directly."""

import sys
import timeit

from shardloop import _core


def best_ns(stmt, number=1_000_000, repeat=7):
    return min(timeit.repeat(stmt, number=number, repeat=repeat, globals={"_core": _core, "x": 1})) / number * 1e9


def main():
    empty = best_ns("pass")
    rows = [("raw vectorcall (METH_FASTCALL)", best_ns("_core._raw_noop(x)") - empty),
            ("pybind11 function", best_ns("_core._pybind_noop(x)") - empty)]
    print(f"Python {sys.version.split()[0]}, ns per call (best of 7 x 1e6, loop overhead removed)\n")
    print("| binding | ns/call |")
    print("|---|---:|")
    for name, ns in rows:
        print(f"| {name} | {ns:.1f} |")
    print(f"\npybind11 / raw: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
