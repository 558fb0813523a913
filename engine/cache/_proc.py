"""Is another process still alive? Both cache stores ask it before removing a dead writer's leftovers."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when process `pid` exists, or when that cannot be ruled out (then its files are left alone).

    Never raises. A pid <= 0 names no single process (os.kill would signal a group): False."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists under another user; anything else: unsure, so keep its files
        return True
    return True
