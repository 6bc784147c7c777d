"""Benchmarks: `python -m bench NAME --help`. They print figures and ratios; they never pass or fail."""
