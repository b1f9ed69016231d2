"""GET /ping, GET /health and GET /metrics: unauthenticated and not enveloped."""

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response

from rainchanel import __version__
from rainchanel.errors import ServiceUnavailable
from rainchanel.server.envelope import json_response
from rainchanel.server.services import Services, get_services

router = APIRouter()


@router.get("/ping")
async def ping():
    return json_response({"message": "pong"})


@router.get("/health")
async def health(services: Services = Depends(get_services)):
    try:
        await services.db.ping()
        counts = await _status_counts(services)
    except (ServiceUnavailable, DBAPIError, OSError) as exc:
        reason = exc.message if isinstance(exc, ServiceUnavailable) else f"database query failed: {exc}"
        return json_response(
            {"status": "unhealthy", "database": "unreachable", "reason": reason, "version": __version__},
            status_code=503,
        )
    return json_response({"status": "healthy", "queue": counts, "database": "ok", "version": __version__})


@router.get("/metrics")
async def metrics(services: Services = Depends(get_services)):
    try:
        await _status_counts(services)
    except (DBAPIError, OSError):
        pass  # serve the last known gauge values rather than no metrics at all
    return Response(generate_latest(services.metrics.exposition_registry()), media_type=CONTENT_TYPE_LATEST)


async def _status_counts(services: Services) -> dict[str, int]:
    """Count tasks by status, at most once per cache period, so scrapes of a large table stay cheap."""
    metrics = services.metrics
    if metrics.status_is_stale():
        metrics.set_status_counts(await services.queue.count_by_status())
    return dict(metrics.status_counts)
