"""tripwire: executable concurrency invariants for MLX inference servers.

Installed, everything lives under this one import name so nothing collides with a project's own `engine`,
`fuzz` or `tools` packages:

- `tripwire.engine` — a small, correct MLX inference engine (needs the `engine` extra)
- `tripwire.invariants` — the static checker (`tripwire check`; stdlib + libcst, no MLX)
- `tripwire.fuzz` — the deterministic concurrency fuzzer
- `tripwire.tools` — regression proofs, the invariant report, benchmarks, field tools

In a source checkout the four folders sit beside this package at the repository root (the repository keeps
that layout); the wheel maps them beneath `tripwire/`. The `__path__` extension below makes
`tripwire.engine` resolve to `<checkout>/engine` when the package is imported from a checkout (an editable
install, `PYTHONPATH=<checkout>`, or a proof's temporary copy), and does nothing in an installed wheel.
"""

import os as _os

__version__ = "0.1.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "engine")) and _os.path.isfile(
        _os.path.join(_checkout, "engine", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 -- a package's __path__ exists at import time
del _os, _here, _checkout
