"""/health is a liveness probe of the generation worker, not of the HTTP process (no zombie server)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tripwire.engine import SimpleEngine
from tripwire.engine.server import create_app


@pytest.mark.timeout(120)
def test_health_is_503_once_the_mlx_worker_thread_died(tiny_model_path):
    async def main():
        engine = SimpleEngine(tiny_model_path)
        app = create_app(engine)
        await engine.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                r = await client.get("/health")
                assert r.status_code == 200 and r.json() == {"status": "ok"}
                # the worker thread ends (as if it crashed) while the server keeps running
                ended = engine._worker.request_stop()
                await asyncio.wait_for(asyncio.wrap_future(ended), 30)
                assert engine._worker.join(30)
                r = await client.get("/health")
                assert r.status_code == 503, r.text
                assert r.json()["status"] == "unavailable" and "worker" in r.json()["reason"]
        finally:
            await engine.stop()

    asyncio.run(main())
