#!/usr/bin/env python3
"""User-space instructions per echo request of the native servers under
callgrind (shardloop's C++ API on one shard, the plain C epoll server), by
echo_instructions.py's method: a short and a long run, difference over
difference. The repeatable counterpart of compare.py's user µs/request.

    python3 perf/native/instructions.py --bin-dir build-native/perf/native [--size 1024] [--duration 3]
"""

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import echo_bench  # noqa: E402
import echo_instructions  # noqa: E402


def servers(bin_dir):
    return {
        "shardloop native": [os.path.join(bin_dir, "echo_server"), "--port", "0", "--shards", "1"],
        "plain C epoll": [os.path.join(bin_dir, "plain_epoll_echo"), "0"],
    }


def measure(loadgen, argv, size, duration, connections):
    short_i, short_r = echo_instructions.run_argv(loadgen, argv, size, duration / 3, connections)
    long_i, long_r = echo_instructions.run_argv(loadgen, argv, size, duration, connections)
    return (long_i - short_i) / max(long_r - short_r, 1), long_r - short_r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--connections", type=int, default=4)
    args = p.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is required")
    loadgen = echo_bench.build_loadgen()
    print(f"server instructions per {args.size}-byte echo request (callgrind, user space, "
          f"{args.connections} connections)")
    for name, argv in servers(args.bin_dir).items():
        per_request, requests = measure(loadgen, argv, args.size, args.duration, args.connections)
        print(f"{name:20s} {per_request:8,.0f}  ({requests} requests)", flush=True)


if __name__ == "__main__":
    main()
