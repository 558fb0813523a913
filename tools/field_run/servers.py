"""The servers a field run knows: pinned requirement, how to install it here, how to start it.

Install modes:
- "full": `pip install REQ mlx[cpu]` (the server's own dependency set).
- "no-heavy": `pip install --no-deps REQ`, then its direct dependencies except `exclude` (CUDA torch and
  friends resolve to multi-GB wheels on Linux; none of them is needed to serve a text model on the CPU).
  The row lists what was left out; if the server imports one of them to start, the row shows that ImportError.
  `also` adds requirements, e.g. the CPU-only torch wheel where a server cannot start without torch (it is
  190 MB from this machine's wheel directory; elsewhere pip reports that it cannot find it, and the row says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

HEAVY = ("torch", "torchvision", "torchaudio", "opencv-python", "opencv-python-headless", "gradio", "mflux",
         "librosa", "av", "mlx-whisper", "mlx-vlm", "mlx-embeddings", "mlx-audio", "outlines",
         "mlx-video-with-audio", "mlx-arsenal")


@dataclass(frozen=True)
class Server:
    name: str
    requirement: str
    command: Callable[[str, str, int], list[str]]  # (venv python, model dir, port) -> argv
    health_path: str = "/health"
    mode: str = "full"
    exclude: tuple[str, ...] = ()
    also: tuple[str, ...] = ()  # extra requirements installed with the dependencies
    env: dict[str, str] = field(default_factory=dict)
    import_check: str = ""

    @property
    def version(self) -> str:
        return self.requirement.split("==", 1)[1] if "==" in self.requirement else "unpinned"


def _run_module(module: str, *args: str) -> Callable[[str, str, int], list[str]]:
    def argv(py: str, model: str, port: int) -> list[str]:
        return [py, "-m", module, *[a.format(model=model, port=port) for a in args]]
    return argv


def _run_main(callable_path: str, prog: str, *args: str) -> Callable[[str, str, int], list[str]]:
    mod, fn = callable_path.split(":")
    code = f"import sys; sys.argv[0] = {prog!r}; from {mod} import {fn}; sys.exit({fn}())"

    def argv(py: str, model: str, port: int) -> list[str]:
        return [py, "-c", code, *[a.format(model=model, port=port) for a in args]]
    return argv


NO_TELEMETRY = {"DO_NOT_TRACK": "1", "RAPID_MLX_TELEMETRY": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

SERVERS: dict[str, Server] = {s.name: s for s in (
    Server("mlx-lm", "mlx-lm==0.32.2",
           _run_module("mlx_lm.server", "--model", "{model}", "--host", "127.0.0.1", "--port", "{port}"),
           health_path="/health", import_check="mlx_lm.server", env=NO_TELEMETRY),
    Server("vllm-mlx", "vllm-mlx==0.6.0",
           _run_main("vllm_mlx.cli:main", "vllm-mlx", "serve", "{model}", "--host", "127.0.0.1", "--port", "{port}"),
           mode="no-heavy", exclude=HEAVY, import_check="vllm_mlx.server", env=NO_TELEMETRY),
    Server("rapid-mlx", "rapid-mlx==0.16.10",
           _run_main("rapid_mlx.cli:main", "rapid-mlx", "serve", "{model}", "--host", "127.0.0.1", "--port",
                     "{port}"),
           mode="no-heavy", exclude=HEAVY, import_check="rapid_mlx.server", env=NO_TELEMETRY),
    Server("mlx-openai-server", "mlx-openai-server==1.8.1",
           _run_main("app.cli:cli", "mlx-openai-server", "launch", "--model-path", "{model}", "--model-type", "lm",
                     "--host", "127.0.0.1", "--port", "{port}"),
           # Its lm handler imports `outlines`, which requires torch: install both, torch as the CPU-only wheel.
           mode="no-heavy", exclude=tuple(h for h in HEAVY if h not in ("outlines", "torch")),
           also=("torch==2.13.0+cpu",), import_check="app.main", env=NO_TELEMETRY),
)}
