"""Benchmarks: speed and memory targets live here, not in timed tests (see bench/README)."""
