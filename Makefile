# make deps   system packages (apt) and the project virtualenv .venv
# make demo   build, install into .venv, run the demo
# make test   GoogleTest (ctest) + pytest, the same under ASan/UBSan, TSan, integration, conformance gate
# make bench  shardloop vs uvloop vs asyncio: micro, callgrind, echo, TLS, HTTP, shards, native -> perf/results/
# make wheel  manylinux wheel with libuv bundled (auditwheel) -> dist/;  make sdist  source archive -> dist/
# make docs   the Sphinx site from docs/ -> build/docs/html

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
APT_PACKAGES := g++ pkg-config libuv1-dev libconcurrentqueue-dev libgtest-dev liburing-dev libssl-dev valgrind wrk
JOBS ?= $(shell nproc)
CMAKE_PY_ARGS = -DPython_EXECUTABLE=$(abspath $(VPY)) -Dpybind11_DIR=$$($(VPY) -c 'import pybind11; print(pybind11.get_cmake_dir())')
# libstdc++ is preloaded too: ASan's __cxa_throw interceptor needs it loaded
# before the extension, or the first C++ throw aborts the interpreter.
ASAN_RT = $(shell g++ -print-file-name=libasan.so) $(shell g++ -print-file-name=libstdc++.so)

.PHONY: deps apt venv build install demo test test-engine test-python test-asan test-tsan test-versions bench bench-native clean
.PHONY: wheel sdist test-wheel docs

deps: apt venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  SUDO=$$([ $$(id -u) -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.deps-stamp

$(VENV)/.deps-stamp: pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# Through a requirements file: a requirement may carry a marker, with
	# spaces and quotes no shell word survives.
	$(VPY) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); \
	  x = d["project"]["optional-dependencies"]; \
	  print("\n".join(d["build-system"]["requires"] + x["test"] + x["docs"] + x["dist"]))' > $(VENV)/requirements.txt
	$(VPY) -m pip install -q -r $(VENV)/requirements.txt
	touch $@

build: deps
	$(VENV)/bin/cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDLOOP_BUILD_PYTHON=ON $(CMAKE_PY_ARGS) >/dev/null
	$(VENV)/bin/ninja -C build -j $(JOBS)

# The real packaging path (scikit-build-core), cached in build/wheel.
install: deps
	$(VPY) -m pip install -q --no-build-isolation --force-reinstall --no-deps -C build-dir=build/{wheel_tag} .

demo: install
	$(VPY) -m shardloop

test: test-engine test-python test-asan test-tsan
test: test-integration conformance-gate test-wheel docs test-uring soak-short

test-engine: build
	cd build && ../$(VENV)/bin/ctest --output-on-failure -j $(JOBS)

test-python: install fault-shim
	cd tests && SHARDLOOP_FAULT_SHIM=$(abspath $(FAULT_SHIM)) ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/python

# The fault-injection shim (tests/fault, LD_PRELOAD): only its target is
# built. test-python runs tests/python/test_fault_injection.py on a fixed set
# of seeds; fault-soak on FAULT_SEEDS seeds per mode and backend (not in
# `make test`).
FAULT_SHIM := build/tests/fault/libshardloop_fault.so
FAULT_SEEDS ?= 100
.PHONY: fault-shim fault-soak
fault-shim: deps
	$(VENV)/bin/cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDLOOP_BUILD_PYTHON=ON $(CMAKE_PY_ARGS) >/dev/null
	$(VENV)/bin/ninja -C build shardloop_fault

fault-soak: install fault-shim
	rm -f build/fault-tally.jsonl
	cd tests && SHARDLOOP_FAULT_SHIM=$(abspath $(FAULT_SHIM)) SHARDLOOP_FAULT_SOAK_SEEDS=$(FAULT_SEEDS) \
	  SHARDLOOP_FAULT_TALLY=$(abspath build/fault-tally.jsonl) \
	  ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/python/test_fault_injection.py
	$(VPY) tests/fault/tally.py build/fault-tally.jsonl

# Differential fuzzing against asyncio's loop (tests/python/test_differential.py,
# Hypothesis): test-python runs a fixed, derandomized set of 25 examples on
# both backends; fuzz runs FUZZ_EXAMPLES from a random seed (Hypothesis prints
# the seed of a failing example). Not in `make test`.
FUZZ_EXAMPLES ?= 2000
.PHONY: fuzz
fuzz: install
	cd tests && SHARDLOOP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ../$(VPY) -m pytest -q -p no:cacheprovider \
	  ../tests/python/test_differential.py --hypothesis-show-statistics

# Soak (tests/soak/soak.py): a mixed load (TCP and TLS connection churn, UDP,
# subprocesses, timers, cross-shard calls) on 1 and 2 shards at once, RSS,
# fds and threads sampled every 10 s; fails on errors, on falling short of
# the connection targets, or on more than 5 % growth after the warm-up.
# soak: SOAK_SECONDS (600) for 100,000 TCP and 10,000 TLS connections, not in
# `make test`; soak-short: 60 s at the same rates, in `make test`.
SOAK_SECONDS ?= 600
.PHONY: soak soak-short
soak: install
	mkdir -p build && $(VPY) tests/soak/soak.py --duration $(SOAK_SECONDS) --json build/soak.json

soak-short: install
	$(VPY) tests/soak/soak.py --duration 60 --warmup 20 --tcp 10000 --tls 1000

# The same suites with every shardloop loop on the io_uring backend (the
# engine's GoogleTests cover both backends in one run, plain, ASan and TSan).
.PHONY: test-uring
test-uring: install conformance-deps build-asan
	cd tests && SHARDLOOP_IO_URING=1 ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/python ../tests/integration
	SHARDLOOP_IO_URING=1 $(VPY) tests/conformance/run.py --gate
	cd tests && LD_PRELOAD="$(ASAN_RT)" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc SHARDLOOP_SANITIZED=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(abspath build-asan/pkg) SHARDLOOP_IO_URING=1 \
	  ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/python

# Frameworks (aiohttp, uvicorn, websockets, anyio, pytest-asyncio) on shardloop and asyncio.
test-integration: install
	cd tests && ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/integration

# CPython's own test_asyncio on shardloop, uvloop and asyncio (README: Conformance).
# The `test` package ships with python.org/pyenv builds; Debian splits it off.
.PHONY: conformance conformance-update conformance-gate conformance-deps test-integration
conformance-deps: deps
	@$(VPY) -c 'import test.test_asyncio.test_events' 2>/dev/null || { \
	  pkg=libpython$$($(VPY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')-testsuite; \
	  SUDO=$$([ $$(id -u) -eq 0 ] || echo sudo); echo "installing: $$pkg"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkg; }

conformance: install conformance-deps
	$(VPY) tests/conformance/run.py

conformance-update: install conformance-deps
	$(VPY) tests/conformance/run.py --update

conformance-gate: install conformance-deps
	$(VPY) tests/conformance/run.py --gate

# The engine's GoogleTest suite under ThreadSanitizer: the inbox, the
# cross-shard rings and the runtime's sleep/wake protocol (no Python).
test-tsan: deps
	$(VENV)/bin/cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDLOOP_BUILD_PYTHON=OFF \
	  -DSHARDLOOP_BUILD_PERF=OFF -DCMAKE_CXX_FLAGS=-fsanitize=thread >/dev/null
	$(VENV)/bin/ninja -C build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ../$(VENV)/bin/ctest --output-on-failure -j $(JOBS)

# The bindings and the sharded runtime under ThreadSanitizer on a
# free-threaded CPython 3.13 that is itself built with TSan
# (tools/build-python-tsan.sh into TSAN_FT_PREFIX, once: ~30 min on this
# loaded 2-core machine). The extension is built with -fsanitize=thread
# against it (build-tsan-ft/pkg) and runs the shard, cross-shard, thread and
# free-threading tests with the GIL off. Reports go to build-tsan-ft/reports;
# any report fails the target. Suppressions: CPython's own file for its
# free-threaded build plus tests/tsan/suppressions-ft.txt (only CPython and
# third-party internals, each with its reason). Not in `make test`: see
# CONTRIBUTING.
TSAN_FT_PREFIX ?= /opt/py313t-tsan
TSAN_FT_VENV := .venv-tsan-ft
TSAN_FT_PY := $(TSAN_FT_VENV)/bin/python
# test_fork.py's forks of a 2-shard process are left out: TSan cannot start
# threads in the child of a multi-threaded fork ("not supported. Dying"),
# and a child that only execs (preexec_fn) is kept. The plain and ASan runs
# cover them.
TSAN_FT_TESTS ?= test_shards.py test_shard_shutdown.py test_shard_exit.py test_free_threading.py \
  test_close_run_race.py test_threads.py test_fork.py
TSAN_FT_SELECT ?= not (test_fork and shards and not preexec_fn)
.PHONY: test-tsan-ft
$(TSAN_FT_VENV)/.deps-stamp: tools/build-python-tsan.sh
	test -x $(TSAN_FT_PREFIX)/bin/python3.13t || JOBS=$(JOBS) tools/build-python-tsan.sh $(TSAN_FT_PREFIX)
	test -x $(TSAN_FT_PY) || $(TSAN_FT_PREFIX)/bin/python3.13t -m venv $(TSAN_FT_VENV)
	TSAN_OPTIONS=report_bugs=0 $(TSAN_FT_PY) -m pip install -q pytest "pybind11>=3"
	touch $@

test-tsan-ft: deps $(TSAN_FT_VENV)/.deps-stamp
	$(VENV)/bin/cmake -S . -B build-tsan-ft -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDLOOP_BUILD_PYTHON=ON \
	  -DSHARDLOOP_BUILD_TESTS=OFF -DSHARDLOOP_BUILD_PERF=OFF -DCMAKE_CXX_FLAGS=-fsanitize=thread \
	  -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DPython_EXECUTABLE=$(abspath $(TSAN_FT_PY)) \
	  -Dpybind11_DIR=$$(TSAN_OPTIONS=report_bugs=0 $(TSAN_FT_PY) -c 'import pybind11; print(pybind11.get_cmake_dir())') >/dev/null
	$(VENV)/bin/ninja -C build-tsan-ft -j $(JOBS)
	cat $(TSAN_FT_PREFIX)/share/tsan/suppressions_free_threading.txt tests/tsan/suppressions-ft.txt \
	  > build-tsan-ft/suppressions.txt
	rm -rf build-tsan-ft/reports && mkdir -p build-tsan-ft/reports
	cd tests/python && PYTHON_GIL=0 SHARDLOOP_SANITIZED=1 PYTHONPATH=$(abspath build-tsan-ft/pkg) \
	  TSAN_OPTIONS="suppressions=$(abspath build-tsan-ft/suppressions.txt) log_path=$(abspath build-tsan-ft/reports)/tsan second_deadlock_stack=1" \
	  ../../$(TSAN_FT_PY) -m pytest -q -p no:cacheprovider $(TSAN_FT_TESTS) -k "$(TSAN_FT_SELECT)"
	@if ls build-tsan-ft/reports/tsan.* >/dev/null 2>&1; then \
	  echo "ThreadSanitizer reports:"; head -c 20000 build-tsan-ft/reports/tsan.*; exit 1; fi

# The interpreter is not instrumented, so it preloads the ASan runtime; its
# own allocations at exit are not ours to judge, hence no leak check there
# (the engine's GoogleTest run above keeps leak detection on).
.PHONY: build-asan
build-asan: deps
	$(VENV)/bin/cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSHARDLOOP_SANITIZE=ON $(CMAKE_PY_ARGS) >/dev/null
	$(VENV)/bin/ninja -C build-asan -j $(JOBS)

test-asan: build-asan
	cd build-asan && ../$(VENV)/bin/ctest --output-on-failure -j $(JOBS)
	cd tests && LD_PRELOAD="$(ASAN_RT)" ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc SHARDLOOP_SANITIZED=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(abspath build-asan/pkg) \
	  ../$(VPY) -m pytest -q -p no:cacheprovider ../tests/python

# pytest on every other CPython 3.11+ found on PATH or under pyenv, each in
# its own virtualenv (.venv-X.Y); run by hand, not part of `make test`.
OTHER_PYTHONS = $(shell for v in 3.12 3.13 3.14; do \
  for p in $$(command -v python$$v) $$HOME/.pyenv/versions/$$v*/bin/python$$v; do \
    if [ -x "$$p" ] && "$$p" -c 'import sys' 2>/dev/null; then echo $$p; break; fi; done; done)
test-versions:
	@for p in $(OTHER_PYTHONS); do \
	  v=$$($$p -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  echo "== CPython $$v ($$p)"; \
	  $(MAKE) --no-print-directory test-python PYTHON=$$p VENV=.venv-$$v || exit 1; \
	done

# pytest (tests/python + tests/integration) on free-threaded CPython 3.13t,
# GIL off. The interpreter is built once into FT_PREFIX by the shared script
# (~3 min on an idle 2-core machine, 12 under load); .venv-3.13t gets the
# pyproject requirements except those with no free-threaded wheels. Run by
# hand, not part of `make test`: about 5 min from a warm venv.
FT_PREFIX ?= /opt/py313t
FT_VENV := .venv-3.13t
FT_PY := $(FT_VENV)/bin/python
FT_NO_WHEELS := uvloop httptools
.PHONY: test-ft
$(FT_VENV)/.deps-stamp: pyproject.toml
	test -x $(FT_PY) || { ../shared/tools/build-free-threaded-python.sh $(FT_PREFIX) && $(FT_PREFIX)/bin/python3.13t -m venv $(FT_VENV); }
	$(FT_PY) -m pip install -q --upgrade pip
	$(FT_PY) -c 'import re, sys, tomllib; d = tomllib.load(open("pyproject.toml", "rb")); \
	  print("\n".join(r for r in d["build-system"]["requires"] + d["project"]["optional-dependencies"]["test"] \
	                 if re.match(r"[\w.-]+", r).group() not in sys.argv[1:]))' $(FT_NO_WHEELS) > $(FT_VENV)/requirements.txt
	$(FT_PY) -m pip install -q --only-binary=:all: -r $(FT_VENV)/requirements.txt
	touch $@

test-ft: $(FT_VENV)/.deps-stamp
	$(FT_PY) -m pip install -q --no-build-isolation --force-reinstall --no-deps -C build-dir=build-ft/wheel .
	cd tests && ../$(FT_PY) -m pytest -q -p no:cacheprovider ../tests/python ../tests/integration

# anyio's, aiohttp's and uvicorn's own test suites (pinned sdists, unpacked
# under build/upstream) on asyncio's loop, uvloop and shardloop; the table
# and what passes on asyncio but not on shardloop go to
# build/upstream/results/summary.md. Not part of `make test` (CONTRIBUTING
# says how long it takes). UPSTREAM_ARGS, e.g. --suite anyio --loop shardloop.
.PHONY: upstream
upstream: install
	$(VPY) tests/upstream/run.py $(UPSTREAM_ARGS)

# The wheel shares install's scikit-build-core cache (build/{wheel_tag}); auditwheel
# copies libuv (and any other library outside the manylinux set) into
# shardloop.libs and tags the wheel with the oldest glibc its symbols allow.
wheel: deps
	rm -rf build/wheelhouse && rm -f dist/shardloop-*.whl
	$(VPY) -m pip wheel -q --no-build-isolation --no-deps -C build-dir=build/{wheel_tag} -w build/wheelhouse .
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/auditwheel repair -w dist build/wheelhouse/shardloop-*.whl \
	  >build/wheelhouse/repair.log 2>&1 || { cat build/wheelhouse/repair.log; exit 1; }
	ls dist/shardloop-*.whl
	$(VENV)/bin/twine check --strict dist/shardloop-*.whl

# The wheel in a fresh venv, with the system's libuv hidden in a private mount
# namespace: imports, loads shardloop.libs' libuv, echoes over TCP.
test-wheel: wheel
	$(VPY) tests/packaging/check_wheel.py dist

sdist: deps
	rm -f dist/shardloop-*.tar.gz
	$(VPY) -m build --sdist --no-isolation --outdir dist . | tail -1
	$(VENV)/bin/twine check --strict dist/shardloop-*.tar.gz

# The Sphinx site; warnings are errors, and every name in shardloop.__all__
# must be documented (tests/packaging/check_docs.py).
docs: install
	$(VENV)/bin/sphinx-build -q -E -W --keep-going -b html docs build/docs/html
	$(VPY) tests/packaging/check_docs.py build/docs/html

bench: install
	$(VPY) perf/bench.py

# Native C++ API (perf/native): shardloop vs plain C epoll vs Go vs Node.js
# echo on one core, plus cross-shard messaging; no Python build involved.
bench-native: deps
	$(VENV)/bin/cmake -S . -B build-native -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARDLOOP_BUILD_PYTHON=OFF -DSHARDLOOP_BUILD_TESTS=OFF >/dev/null
	$(VENV)/bin/ninja -C build-native -j $(JOBS)
	$(VPY) perf/native/compare.py --bin-dir build-native/perf/native

clean:
	rm -rf build build-asan build-tsan build-ft build-tsan-ft build-native dist
