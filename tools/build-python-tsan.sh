#!/usr/bin/env bash
# Free-threaded CPython 3.13 built with ThreadSanitizer (--disable-gil
# --with-thread-sanitizer), for `make test-tsan-ft`.
#
# usage: tools/build-python-tsan.sh [PREFIX]     (default /opt/py313t-tsan)
#
# The source is Debian trixie's python3.13 source package, fetched with the
# apt mirror this machine already uses (the only place CPython 3.13's source
# is reachable from here). CPython's own TSan suppression files for the
# free-threaded build are installed next to the interpreter, under
# PREFIX/share/tsan/, because the races they describe are CPython's, not ours.
# Does nothing when PREFIX/bin/python3.13t already runs. Prints the
# interpreter's path last.
set -euo pipefail
PREFIX=${1:-/opt/py313t-tsan}
PY=$PREFIX/bin/python3.13t
if [ -x "$PY" ] && "$PY" -c 'import sys' >/dev/null 2>&1; then echo "$PY"; exit 0; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mirror=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}';
            grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}'; } 2>/dev/null \
          | grep -v security | head -n 1 || true)
[ -n "$mirror" ] || { echo "build-python-tsan: no Debian mirror in the apt configuration" >&2; exit 1; }
mkdir -p "$tmp/state/partial" "$tmp/cache"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$tmp/src.list"
apt=(-o Dir::Etc::SourceList="$tmp/src.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$tmp/state" -o Dir::Cache="$tmp/cache")
apt-get "${apt[@]}" -qq update >/dev/null
# Headers for the stdlib modules the tests use (ssl above all).
apt-get install -y -qq libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev >/dev/null 2>&1 || true
(cd "$tmp" && apt-get "${apt[@]}" -qq source --download-only python3.13 >/dev/null)
tarball=$(ls "$tmp"/python3.13_*.orig.tar.* | grep -v '\.asc$' | sort -V | tail -n 1)
tar -C "$tmp" -xf "$tarball"
src=$(ls -d "$tmp"/Python-3.13*/ | head -n 1)
cd "$src"
# No PGO/LTO: an instrumented interpreter is for finding races, not speed.
# No test package: `make install` byte-compiles the whole library three times
# with the instrumented interpreter, which is most of the install's time.
./configure -q --prefix="$PREFIX" --disable-gil --with-thread-sanitizer --disable-test-modules >"$tmp/configure.log" 2>&1 \
  || { tail -30 "$tmp/configure.log"; exit 1; }
make -s -j"${JOBS:-2}" >"$tmp/make.log" 2>&1 || { tail -40 "$tmp/make.log"; exit 1; }
make -s install >"$tmp/install.log" 2>&1 || { tail -40 "$tmp/install.log"; exit 1; }
mkdir -p "$PREFIX/share/tsan"
cp Tools/tsan/*.txt "$PREFIX/share/tsan/"
"$PY" -c 'import sys, ssl; assert not sys._is_gil_enabled(), "GIL is on"'
echo "$PY"
