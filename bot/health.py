"""The HTTP listener for ops: /healthz for the container's health check, /metrics for Prometheus."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.metrics import Metrics

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Health,
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
        self.host, self.port = host, port
        self.metrics = metrics
        self.health = health
        self.refresh = refresh
        self._runner: web.AppRunner | None = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, why = self.health()
        return web.Response(status=200 if ok else 503, text=why + "\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        try:
            await self.refresh()
        except Exception:  # a scrape must not fail because one gauge could not be read
            log.exception("could not refresh the gauges for /metrics")
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("health and metrics on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
