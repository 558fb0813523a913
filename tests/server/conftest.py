"""A real uvicorn server on 127.0.0.1 (free port, background thread) around one SimpleEngine."""

from __future__ import annotations

import socket
import sys
import threading
import traceback
from typing import Iterator

import pytest

from tripwire.engine import SimpleEngine
from tripwire.engine.server import create_app
from tripwire.engine.server.serving import server_config
from server_helpers import LiveServer, _Server


@pytest.fixture(scope="session")
def live_server(tiny_model_path) -> Iterator[LiveServer]:
    engine = SimpleEngine(tiny_model_path)
    app = create_app(engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(server_config(app, log_level="warning"))  # the guarded protocol `serve` runs
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn", daemon=True)
    thread.start()
    assert server.ready.wait(60), "uvicorn did not start within 60 s"
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, engine)
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn thread did not stop; every thread's stack:\n" + _stacks()
        sock.close()


def _stacks() -> str:
    """Where each live thread is (what a hung shutdown waits on)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


@pytest.fixture
def srv(live_server: LiveServer) -> Iterator[LiveServer]:
    """Each test starts and ends with an idle engine and a tripped-never MLX guard."""
    live_server.wait_idle()
    yield live_server
    st = live_server.wait_idle()
    assert st["mlx_guard"]["trips"] == 0, st["mlx_guard"]
