"""tripwire invariants: a fast static checker for concurrency bug shapes in async / MLX inference code.

The checker never imports or executes the code it checks: it reads bytes, applies a per-rule byte
prefilter, parses each remaining file once with the stdlib `ast` and runs every enabled rule over that
tree. Public entry points:

- `invariants.api.check(paths, config) -> CheckResult`
- `invariants.report.build_report(paths, config) -> dict` (per-rule holds/violated/suppressed/not-applicable)
- `python -m tripwire.invariants` / `tripwire` (CLI), `pytest --tripwire` (plugin)
"""

if __name__ == "invariants":
    # A checkout's short form (`python -m invariants ...` from the repository root) imports this folder as the
    # top-level package `invariants`. Hand out the one real package instead and resolve the relative imports below
    # inside it, so no module is ever loaded twice under two names.
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("tripwire." + __name__)
    __path__ = _sys.modules[__name__].__path__
    __package__ = "tripwire." + __name__

__version__ = "0.1.0"

__all__ = ["__version__"]
