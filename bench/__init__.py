"""Benchmarks of gatewayd against the physical limits of the machine (issue 8).

`python -m bench [throughput|latency|scale|recovery|api|all] [--quick]`; see docs/performance.md.
Each benchmark prints a table and writes bench/results/<name>.json. Nothing here asserts timings.
"""
