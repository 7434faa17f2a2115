"""Admin endpoints: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.admin.health import Readiness
from sidecar.telemetry import Metrics


def build_admin_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reasons = readiness.reasons()
        degraded = readiness.degraded()
        if reasons:
            return web.json_response(
                {"status": "not ready", "reasons": reasons, "degraded": degraded}, status=503
            )
        return web.json_response({"status": "ready", "degraded": degraded})

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
