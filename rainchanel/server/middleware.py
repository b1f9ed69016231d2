"""ASGI middleware: the request body limit, and request logs and metrics."""

import time

import orjson
import structlog

from rainchanel.server.metrics import Metrics

log = structlog.get_logger("rainchanel.http")

# Longer User-Agent values are cut in logs, so a client cannot flood them.
MAX_LOGGED_USER_AGENT = 200


class BodyTooLarge(Exception):
    pass


def _error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message}})


class BodyLimitMiddleware:
    """Refuse bodies over max_body_bytes with 413.

    A declared Content-Length over the limit is refused before any of the
    body is read; a chunked body is counted as it arrives.
    """

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await self._reject(send)

        received = 0
        response_started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send) -> None:
        message = f"request body is over the {self.max_body_bytes} byte limit"
        body = _error_body(413, message)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class JsonBodyMiddleware:
    """Read untyped bodies as JSON, as the earlier server did.

    Its JSON binding ignored Content-Type, so clients (and curl, which sends
    form encoding by default) may omit it. Bodies sent with any other
    explicit type, such as raw module uploads, are left alone.
    """

    UNTYPED = {None, b"application/x-www-form-urlencoded"}

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
            content_type = next((value for name, value in scope["headers"] if name == b"content-type"), None)
            if content_type in self.UNTYPED:
                # Changed in place: the outer middleware reads the matched
                # route from this same scope object.
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
        return await self.app(scope, receive, send)


class RequestLogMiddleware:
    """Log method, route, status and duration of each request, and time it."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        structlog.contextvars.clear_contextvars()
        user_agent = _header(scope, b"user-agent")
        if user_agent:
            # Every event of this request names the client, so the logs
            # distinguish workers that share an account.
            structlog.contextvars.bind_contextvars(client=user_agent[:MAX_LOGGED_USER_AGENT])
        started = time.perf_counter()
        status = 500

        async def recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            duration = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.http_duration.labels(scope["method"], route, str(status)).observe(duration)
            log.info(
                "http_request",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(duration * 1000, 2),
            )


def _header(scope, name: bytes) -> str | None:
    """Return the first value of the header name (lower case), or None when it is missing."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _route_template(scope) -> str:
    # The route template, not the raw path, keeps label cardinality bounded.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if path else "unmatched"
