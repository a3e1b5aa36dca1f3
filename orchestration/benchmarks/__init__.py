"""Benchmarks and soak runs: each prints ratios against a baseline measured in the same run."""
