"""Measuring code shared by `toolchain export` and the benchmarks/ scripts."""
