"""`make bench`: followup measured against its baselines on private redis-servers (see docs/BENCHMARKS.md)."""
