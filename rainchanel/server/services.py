"""The objects a running server shares between requests."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rainchanel.config import Settings
from rainchanel.errors import Unauthorized
from rainchanel.server.auth import JWT_SECRET_SETTING, Principal, TokenService, generate_secret
from rainchanel.server.metrics import Metrics
from rainchanel.server.validation import ModuleValidator
from rainchanel.server.waiting import SharedCounters, Signal
from rainchanel.store.accounts import AccountStore
from rainchanel.store.database import Database
from rainchanel.store.modules import ModuleStore
from rainchanel.store.queue import BackoffPolicy, TaskQueue

log = structlog.get_logger("rainchanel.server")


@dataclass
class Services:
    settings: Settings
    db: Database
    accounts: AccountStore
    modules: ModuleStore
    queue: TaskQueue
    validator: ModuleValidator
    tokens: TokenService
    metrics: Metrics
    # Wakes long-polling claims when a task is published in this process.
    task_signal: Signal = field(default_factory=Signal)
    # Wakes long-polling result collectors when an outcome is recorded.
    result_signal: Signal = field(default_factory=Signal)

    async def close(self) -> None:
        self.validator.close()
        await self.db.close()


async def open_services(settings: Settings, metrics: Metrics) -> Services:
    """Connect to the database and build every shared component."""
    db = Database(settings.database.sqlalchemy_url(), settings.database.pool_size)
    accounts = AccountStore(db)
    modules = ModuleStore(db)
    backoff = BackoffPolicy(settings.task.retry_backoff_seconds, settings.task.retry_backoff_max_seconds)
    secret = await _jwt_secret(settings, accounts)
    task_signal, result_signal = _signals()
    return Services(
        settings=settings,
        db=db,
        accounts=accounts,
        modules=modules,
        queue=TaskQueue(db, modules, backoff),
        validator=ModuleValidator(),
        tokens=TokenService(secret, settings.jwt.expires_seconds, settings.jwt.leeway_seconds),
        metrics=metrics,
        task_signal=task_signal,
        result_signal=result_signal,
    )


# Set by `serve --workers N` to the file its processes share wake-ups through.
WAKEUP_FILE_VARIABLE = "RAINCHANEL_WAKEUP_FILE"
TASK_SLOT, RESULT_SLOT = 0, 1
WAKEUP_SLOTS = 2


def _signals() -> tuple[Signal, Signal]:
    path = os.environ.get(WAKEUP_FILE_VARIABLE)
    shared = SharedCounters(Path(path), WAKEUP_SLOTS) if path else None
    return Signal(shared, TASK_SLOT), Signal(shared, RESULT_SLOT)


async def _jwt_secret(settings: Settings, accounts: AccountStore) -> str:
    if settings.jwt.secret:
        return settings.jwt.secret
    # Stored in the database so that every server on it accepts the
    # tokens any of them issued.
    secret, created = await accounts.get_or_create_setting(JWT_SECRET_SETTING, generate_secret())
    log.warning(
        "jwt_secret_generated" if created else "jwt_secret_loaded",
        detail="no jwt.secret configured; using a random secret kept in the database's server_settings table. "
        "Set JWT_SECRET to manage it yourself.",
    )
    return secret


async def get_services(request: Request) -> Services:
    # async, so FastAPI calls it on the event loop instead of a thread.
    return request.app.state.services


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> Principal:
    """Authenticate the bearer token of a protected route."""
    if credentials is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>' from POST /login")
    principal = request.app.state.services.tokens.verify(credentials.credentials)
    structlog.contextvars.bind_contextvars(user_id=principal.user_id)
    return principal
