"""Field runs: real MLX servers from the package registry, driven under the MLX thread sanitizer.

    python -m tripwire.tools.field_run [SERVER ...|all] [--seconds 30] [--out reports/field_run.json]

Each server gets its own venv (pinned version, cached in ~/.cache/tripwire/field-venvs), the sanitizer is copied
into it with its `.pth` hook, and the server is started on 127.0.0.1 with the embedded tiny model and
TRIPWIRE_MLX_SANITIZER=1. A load phase (32 clients, streaming and not, 20% mid-stream disconnects, cancelled
non-streaming requests) runs for a bounded time; then a probe request, a thread dump (SIGUSR1, faulthandler) and
a SIGINT shutdown. One row per server lands in the JSON file, including the exact error when a server cannot
be installed or started here. See `servers.py` for what is installed and how each server is started.
"""
