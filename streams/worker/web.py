"""Web (worker): the pages the worker serves: /health, the dashboard and what needs a person,
/mapping and the Prometheus /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import faust
from prometheus_client import generate_latest

from streams.core.mapping import Mapping as SyncMapping
from streams.ops.observe import Observer, attention
from streams.settings import Settings
from streams.worker import metrics

WEB = resources.files("streams.web")
STATIC = {
    "/dashboard/": ("index.html", "text/html"),
    "/dashboard/attention": ("attention.html", "text/html"),
    "/dashboard/app.js": ("app.js", "text/javascript"),
    "/dashboard/style.css": ("style.css", "text/css"),
}


def add_pages(
    app: faust.App,
    settings: Settings,
    state: Callable[[], dict[str, Any]],
    mapping: Callable[[], SyncMapping],
    observer: Observer,
    dsns: Mapping[str, str],
) -> None:
    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json(state())

    for path, (name, content_type) in STATIC.items():

        async def static(web: Any, request: Any, name: str = name, kind: str = content_type) -> Any:
            return web.text(WEB.joinpath(name).read_text(), content_type=kind)

        app.page(path, name=f"static_{name}")(static)

    @app.page("/dashboard/api/state")
    async def dashboard_state(web: Any, request: Any) -> Any:
        if observer.current is None:
            return web.json({"error": "collecting the first figures"}, status=503)
        return web.json(observer.current)

    @app.page("/dashboard/api/attention")
    async def dashboard_attention(web: Any, request: Any) -> Any:
        return web.json(await asyncio.to_thread(attention, settings, mapping(), dsns))

    @app.page("/mapping")
    async def mapping_page(web: Any, request: Any) -> Any:
        current = mapping()
        metrics.MAPPING_VERSION.set(current.version)
        return web.json(current.as_json())

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(metrics.REGISTRY), content_type="text/plain; version=0.0.4"
        )
