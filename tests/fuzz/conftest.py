"""Fuzz tests: the fuzz pytest plugin (options --fuzz-budget/--fuzz-seed) is registered via pytest11."""
