"""What operators and their monitoring read: ``GET /health`` and ``GET /metrics``.

Unmetered (plain ``APIRoute``s): a monitor's polling must not fill the request metrics.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from veil.gateway.routes.dependencies import CurrentGateway

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(gateway: CurrentGateway) -> JSONResponse:
    """200 while some node is routed to, 503 (``degraded``) otherwise; each node with why not."""
    nodes = [
        {
            "node_small_id": n.node_small_id,
            "url": n.url,
            "healthy": n.healthy,
            "reason": n.reason,  # why it is not routed to (e.g. it serves without tickets)
        }
        for n in gateway.registry.nodes
    ]
    healthy = any(n["healthy"] for n in nodes)
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "nodes": nodes},
        status_code=200 if healthy else 503,
    )


@router.get("/metrics")
async def metrics(gateway: CurrentGateway) -> Response:
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")
