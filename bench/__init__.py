"""Benchmarks: each measures undebug against a named baseline in the same run."""
