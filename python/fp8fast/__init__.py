"""fp8fast."""
