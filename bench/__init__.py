"""The package's benchmarks, by family: ``bench.speed``, ``bench.quality``, ``bench.probes`` (see bench/README.md).

Shared here: ``bench.machine`` (what a run ran on), ``bench.models`` (demo questions, random models of a real
architecture) and ``bench.record`` (the stored result of every script and the explicit docs refresh).
"""
