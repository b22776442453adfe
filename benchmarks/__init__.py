"""Benchmarks of lingo: proxy overhead, streaming, cold start under 10,000 held requests, profile.

Run everything with `make bench` (or `python -m benchmarks.run`); see docs/benchmarks.md.
"""
