"""asv benchmarks of fp8fast (run: see README, "Benchmarks")."""
