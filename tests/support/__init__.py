"""Test and benchmark data: histories and worlds the suites replay (not shipped in the packages)."""
