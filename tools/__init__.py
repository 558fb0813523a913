"""Regression-injection proofs, the invariant report, benchmarks and the test runner."""

if __name__ == "tools":
    # A checkout's short form (`python -m tools ...` from the repository root) imports this folder as the
    # top-level package `tools`. Hand out the one real package instead and resolve the relative imports below
    # inside it, so no module is ever loaded twice under two names.
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("tripwire." + __name__)
    __path__ = _sys.modules[__name__].__path__
    __package__ = "tripwire." + __name__
