"""make docs, after sphinx-build: every name in shardloop.__all__ has a
docstring and an entry of its own in the built API reference.

    python tests/packaging/check_docs.py build/docs/html
"""

from __future__ import annotations

import inspect
import os
import sys

import shardloop


def main() -> None:
    html_dir = sys.argv[1] if len(sys.argv) > 1 else "build/docs/html"
    with open(os.path.join(html_dir, "api.html"), encoding="utf-8") as f:
        api = f.read()
    problems = []
    for name in shardloop.__all__:
        if not inspect.getdoc(getattr(shardloop, name)):
            problems.append(f"shardloop.{name} has no docstring")
        if f'id="shardloop.{name}"' not in api:
            problems.append(f"shardloop.{name} is not in {html_dir}/api.html")
    if problems:
        sys.exit("check_docs:\n  " + "\n  ".join(problems))
    print(f"check_docs: all {len(shardloop.__all__)} names of shardloop.__all__ documented")


if __name__ == "__main__":
    main()
