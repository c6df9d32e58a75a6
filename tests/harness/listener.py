"""The bot's health and metrics listener (`http.listen`) as ops and Prometheus read it."""

from __future__ import annotations

import socket

import aiohttp

__all__ = ["Listener", "free_port", "metric"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Listener:
    """The bot's health and metrics listener, at http://127.0.0.1:PORT (`http.listen`)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> dict[str, str]:
        return {"listen": f"127.0.0.1:{self.port}"}

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(self.base + path) as resp,
        ):
            return resp.status, await resp.text()

    async def healthz(self) -> tuple[int, str]:
        return await self.get("/healthz")

    async def metric(self, name: str) -> float:
        status, text = await self.get("/metrics")
        assert status == 200, f"/metrics: {status} {text}"
        return metric(text, name)


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text, e.g. 'onboarding_storage_errors_total{kind=
    "full"}' (labels exactly as written); AssertionError if there is none."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    raise AssertionError(f"no sample {name} in:\n{text}")
