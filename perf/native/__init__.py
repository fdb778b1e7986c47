"""A package so that bench.py can import `native.compare` (the native part)
without its name clashing with perf/compare.py."""
