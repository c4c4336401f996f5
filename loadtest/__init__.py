"""Benchmarks: throughput and latency, side by side with baselines measured in the same run."""
