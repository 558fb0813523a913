"""Fuzz tests: load the fuzz pytest plugin for this directory only."""

pytest_plugins = ["fuzz.pytest_plugin"]
