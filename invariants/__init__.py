"""tripwire invariants: a fast static checker for concurrency bug shapes in async / MLX inference code.

The checker never imports or executes the code it checks: it reads bytes, applies a per-rule byte
prefilter, parses each remaining file once with the stdlib `ast` and runs every enabled rule over that
tree. Public entry points:

- `invariants.api.check(paths, config) -> CheckResult`
- `invariants.report.build_report(paths, config) -> dict` (per-rule holds/violated/suppressed/not-applicable)
- `python -m invariants` / `tripwire` (CLI), `pytest --tripwire` (plugin)
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
