"""hpsearch's benchmarks, run as modules from the repository root (``python -m bench.run``); bench/README.md is the
index of what each measures and of every result."""
