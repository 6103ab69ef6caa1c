"""Benchmarks: every figure is measured next to a baseline in the same run.

Run `python -m bench.run` from the repository root (`--quick`, `--only NAME`, `--json FILE`).
"""
