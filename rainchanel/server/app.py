"""The FastAPI application: routes, error envelopes, middleware and lifespan."""

import asyncio
import contextlib
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from rainchanel import __version__
from rainchanel.config import Settings
from rainchanel.errors import RainChanelError
from rainchanel.server.envelope import error_response, handle_domain_error, handle_http_error, handle_validation_error
from rainchanel.server.metrics import Metrics
from rainchanel.server.middleware import BodyLimitMiddleware, JsonBodyMiddleware, RequestLogMiddleware
from rainchanel.server.reclaim import run_reclaim_loop
from rainchanel.server.routes import accounts, modules, ops, results, tasks
from rainchanel.server.services import open_services
from rainchanel.server.waiting import watch_database
from rainchanel.store.migrate import upgrade_database

log = structlog.get_logger("rainchanel.server")


def create_app(settings: Settings, migrate: bool = True, metrics: Metrics | None = None) -> FastAPI:
    """Build the application; the database is opened when the lifespan starts."""
    metrics = metrics or Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if migrate:
            upgrade_database(settings.database.sqlalchemy_url())
        services = await open_services(settings, metrics)
        app.state.services = services
        stopping = asyncio.Event()
        reclaimer = asyncio.create_task(
            run_reclaim_loop(
                services.queue, metrics, settings.task.stale_check_interval_seconds, stopping, services.result_signal
            )
        )
        # Background tasks that wake long polls: the shared counters of
        # `serve --workers N` and the database watch for waiting claims.
        wakers = [asyncio.create_task(signal.relay_shared()) for signal in (services.task_signal, services.result_signal)]
        wakers.append(asyncio.create_task(watch_database(services.task_signal, services.queue.has_claimable)))
        log.info("server_started", version=__version__, database=services.db.engine.dialect.name)
        try:
            yield
        finally:
            stopping.set()
            await reclaimer
            for waker in wakers:
                waker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waker
            await services.close()
            log.info("server_stopped")

    app = FastAPI(
        title="RainChanel",
        version=__version__,
        description="A distributed task queue that runs WebAssembly modules.",
        lifespan=lifespan,
    )
    app.include_router(ops.router)
    app.include_router(accounts.router)
    app.include_router(tasks.router)
    app.include_router(results.router)
    app.include_router(modules.router)

    app.add_exception_handler(RainChanelError, handle_domain_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)

    # Added last, so it runs first: an oversized body is refused before routing.
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.limits.max_body_bytes)
    return app


async def _handle_unexpected_error(request: Request, exc: Exception):
    log.error("request_failed", method=request.method, path=request.url.path, exc_info=exc)
    return error_response(500, "internal server error; the server log has the details")
