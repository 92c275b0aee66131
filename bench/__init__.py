"""Speed and quality benchmarks, run from the repository root as ``python -m bench.bench_<name>``."""
