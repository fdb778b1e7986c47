"""make test-wheel: the wheel `make wheel` repaired into dist/, installed into a
fresh virtualenv and run where the system's libuv cannot be loaded.

The child runs in a private mount namespace (``unshare -m``; ``unshare -rm``
when not root) in which every system copy of each library auditwheel bundled in
``shardloop.libs`` (libuv, and e.g. liburing once it is linked) is covered by a
bind-mounted empty file. Inside it a control first checks that
``ctypes.CDLL("libuv.so.1")`` now fails; then the smoke test imports shardloop
from the fresh venv, checks in /proc/self/maps that every bundled library is
mapped from ``shardloop.libs`` and from nowhere else, and echoes bytes over TCP
with asyncio's streams on a shardloop loop.

    python tests/packaging/check_wheel.py dist
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

SMOKE = r'''
import asyncio, os, sys
import shardloop
from shardloop import _core

expected_version, venv, bundled_names = sys.argv[1], sys.argv[2], sys.argv[3:]
package_dir = os.path.dirname(shardloop.__file__)
assert package_dir.startswith(venv + os.sep), f"shardloop imported from {package_dir}, not from {venv}"
assert shardloop.__version__ == expected_version, (shardloop.__version__, expected_version)


async def echo(reader, writer):
    writer.write(await reader.readexactly(4))
    await writer.drain()
    writer.close()


async def main():
    assert isinstance(asyncio.get_running_loop(), shardloop.Loop)
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    answer = await reader.readexactly(4)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return answer


assert shardloop.run(main()) == b"ping"

mapped = {line.split()[-1] for line in open("/proc/self/maps") if "/" in line}
bundled = os.path.join(os.path.dirname(package_dir), "shardloop.libs")
assert "libuv" in bundled_names, f"libuv is not bundled: {bundled_names}"
for name in bundled_names:
    paths = sorted(p for p in mapped if os.path.basename(p).startswith((name + "-", name + ".so")))
    assert paths, f"{name} is not mapped into the process"
    assert all(p.startswith(bundled + os.sep) for p in paths), f"{name} mapped from {paths}"
    print(f"wheel smoke: {name} from {paths[0]}")
print(f"wheel smoke: shardloop {shardloop.__version__} from {package_dir}, "
      f"libuv {_core.libuv_version()}, TCP echo ok")
'''

LIB_DIRS = ["/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib"]


def bundled_libraries(wheel: str) -> list[str]:
    """The libraries auditwheel grafted into shardloop.libs, by name:
    shardloop.libs/libuv-c85c14db.so.1.0.0 -> libuv."""
    with zipfile.ZipFile(wheel) as z:
        files = [n.split("/", 1)[1] for n in z.namelist() if n.startswith("shardloop.libs/") and n[15:]]
    return sorted({re.sub(r"-[0-9a-f]{8}\.so.*$", "", f) for f in files})


def system_copies(names: list[str]) -> list[str]:
    """Every NAME.so* the dynamic loader could find, as real paths."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = LIB_DIRS + [os.path.join(d, multiarch) for d in LIB_DIRS if multiarch]
    found = {os.path.realpath(p) for d in dirs for name in names
             for p in glob.glob(os.path.join(d, name + ".so*"))}
    return sorted(p for p in found if os.path.isfile(p))


def find_wheel(dist: str) -> tuple[str, str]:
    tag = "cp%d%d" % sys.version_info[:2]
    wheels = sorted(glob.glob(os.path.join(dist, f"shardloop-*-{tag}-{tag}*-manylinux_*.whl")))
    if len(wheels) != 1:
        sys.exit(f"check_wheel: expected one manylinux {tag} wheel in {dist}, found {wheels} (run make wheel)")
    return wheels[0], os.path.basename(wheels[0]).split("-")[1]


def main() -> None:
    started = time.monotonic()
    wheel, version = find_wheel(sys.argv[1] if len(sys.argv) > 1 else "dist")
    with tempfile.TemporaryDirectory(prefix="shardloop-wheel-") as tmp:
        venv = os.path.join(tmp, "venv")
        python = os.path.join(venv, "bin", "python")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index",
                        "--no-deps", wheel], check=True)
        smoke = os.path.join(tmp, "smoke.py")
        with open(smoke, "w") as f:
            f.write(SMOKE)
        empty = os.path.join(tmp, "empty")
        open(empty, "w").close()

        names = bundled_libraries(wheel)
        hidden = system_copies(names)
        lines = ["set -e"]
        lines += [f"mount --bind {shlex.quote(empty)} {shlex.quote(path)}" for path in hidden]
        control = shlex.join([python, "-I", "-c", "import ctypes; ctypes.CDLL('libuv.so.1')"])
        lines.append(f"if {control} 2>/dev/null; then echo 'check_wheel: the system libuv is still loadable'; exit 3; fi")
        lines.append("exec " + shlex.join([python, "-I", smoke, version, os.path.realpath(venv)] + names))
        unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
        # The smoke runs from the temporary directory: nothing of the checkout is importable.
        result = subprocess.run(unshare + ["sh", "-c", "\n".join(lines)], cwd=tmp, timeout=120)
        if result.returncode != 0:
            sys.exit(f"check_wheel: {os.path.basename(wheel)} failed (exit {result.returncode})")
    print(f"check_wheel: {os.path.basename(wheel)} ok, bundling {', '.join(names)}, with {len(hidden)} system file(s) hidden "
          f"({', '.join(hidden) or 'none present'}), {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
