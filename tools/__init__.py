"""Regression-injection proofs, the invariant report, benchmarks and the test runner."""
