"""Sums the per-child lines test_fault_injection.py appends to
$SHARDLOOP_FAULT_TALLY (make fault-soak): children, faults injected by
call, and the bytes the soft runs moved, all of which arrived (the test
fails otherwise). usage: tally.py FILE"""

import collections
import json
import sys


def main(path):
    children = collections.Counter()
    faults = collections.Counter()
    by_call = collections.Counter()
    moved = 0
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            key = (row["mode"], "io_uring" if row["backend"] == "1" else "epoll")
            children[key] += 1
            faults[key] += row["faults"]
            by_call.update({k: v for k, v in row["faults_of"].items() if v})
            if row["mode"] == "soft":
                moved += sum(r.get("bytes") or 0 for r in row["results"])
    for key in sorted(children):
        print("%s/%s: %d children, %d faults injected" % (key + (children[key], faults[key])))
    print("faults by call:", ", ".join("%s %d" % kv for kv in by_call.most_common()))
    print("total: %d children, %d faults, %d bytes echoed byte-exact in the soft runs"
          % (sum(children.values()), sum(faults.values()), moved))


if __name__ == "__main__":
    main(sys.argv[1])
