"""Synchronous Python client for the RainChanel HTTP API.

Each method maps to one route and returns the `data` member of the server's
envelope. Every failure, whether the server rejected the request or the
request never reached it, raises ApiError.
"""

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import httpx

from rainchanel import __version__
from rainchanel.errors import ConfigError, RainChanelError

DEFAULT_SERVER_URL = "http://127.0.0.1:8080"
# Sent as User-Agent; the server logs it with each request.
DEFAULT_USER_AGENT = f"rainchanel-client/{__version__}"
DEFAULT_TIMEOUT_SECONDS = 30.0

# Maximum length of a non-JSON error body quoted in an ApiError message.
MAX_QUOTED_BODY_CHARS = 200

# Limits of the server's batch routes: tasks in one POST /tasks, items in one
# POST /results or /failures, tasks or results in one GET.
MAX_PUBLISH_BATCH = 1000
MAX_REPORT_BATCH = 1000
MAX_FETCH_BATCH = 100

# Maximum wait the server accepts on GET /tasks and GET /results.
MAX_WAIT_SECONDS = 30.0

MODULE_REFERENCE_PREFIX = "sha256:"
WASM_MEDIA_TYPE = "application/wasm"


class ApiError(RainChanelError):
    """A request failed: the server returned an error, or it was not reached.

    `status` is the HTTP status code, or None when no response arrived
    (connection refused, timeout, broken connection).
    """

    def __init__(self, message: str, status: int | None = None, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        if status is not None:
            self.status_code = status

    @property
    def is_transient(self) -> bool:
        """True when sending the same request again later may succeed."""
        return self.status is None or self.status == 429 or self.status >= 500

    def __str__(self) -> str:
        where = f"{self.method} {self.path}".strip()
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        return f"{where} failed ({status}): {self.message}" if where else self.message


@dataclass
class TaskRequest:
    """One task to publish: a function call on a module given inline or by reference.

    Give exactly one of `module` (the raw .wasm bytes) and `module_ref` (the
    "sha256:<hex>" reference that upload_module returned). Options left at
    None take the server's defaults.
    """

    func: str
    args: Sequence[Any] = ()
    module: bytes | None = None
    module_ref: str | None = None
    timeout_seconds: int | None = None
    max_retries: int | None = None
    stdin: str | None = None
    env: Mapping[str, str] | None = field(default=None)
    priority: int | None = None
    delay_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the task in the JSON form of POST /tasks.

        Raises ValueError unless exactly one of module and module_ref is given.
        """
        if (self.module is None) == (self.module_ref is None):
            raise ValueError(f"task {self.func!r}: give either module (bytes) or module_ref (\"sha256:<hex>\"), not both or neither")
        body: dict[str, Any] = {"func": self.func, "args": list(self.args)}
        if self.module is not None:
            body["wasm_module"] = base64.b64encode(self.module).decode("ascii")
        else:
            body["module"] = module_reference(self.module_ref or "")
        optional = {
            "timeout_seconds": self.timeout_seconds,
            "max_retries": self.max_retries,
            "stdin": self.stdin,
            "env": None if self.env is None else dict(self.env),
            "priority": self.priority,
            "delay_seconds": self.delay_seconds,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        return body


def module_reference(sha256: str) -> str:
    """Return "sha256:<hex>" for a bare hex digest or a reference that already has the prefix."""
    digest = sha256.removeprefix(MODULE_REFERENCE_PREFIX).lower()
    return MODULE_REFERENCE_PREFIX + digest


def server_url_problem(url: str) -> str | None:
    """Return why url cannot be the base URL of a server, or None when it can."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return str(exc)
    if parsed.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parsed.host:
        return "it names no host"
    return None


class RainChanelClient:
    """Client for one RainChanel server.

    Methods take their optional parameters as keyword-only arguments, so
    request options can be added without breaking callers. An instance keeps one connection pool; use one instance per
    thread, or close it with `close()` or a `with` block.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        problem = server_url_problem(base_url)
        if problem is not None:
            raise ConfigError(f"invalid server URL {base_url!r}: {problem}, as in {DEFAULT_SERVER_URL}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_seconds = timeout
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers={"User-Agent": user_agent}
        )

    def __enter__(self) -> "RainChanelClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # Accounts

    def register(self, username: str, password: str) -> dict[str, Any]:
        """Create an account. Raises ApiError with status 409 when the name is taken."""
        return self._request("POST", "/register", json={"username": username, "password": password})

    def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in, keep the returned token for later requests and return the login data.

        The data contains `token`, `user_id`, `username` and `expires_at`.
        """
        data = self._request("POST", "/login", json={"username": username, "password": password})
        self.token = data["token"]
        return data

    # Publishing and results

    def publish(
        self,
        module: bytes | None,
        func: str,
        args: Sequence[Any] = (),
        *,
        timeout_seconds: int | None = None,
        max_retries: int | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        priority: int | None = None,
        delay_seconds: float | None = None,
        module_ref: str | None = None,
    ) -> int:
        """Publish a task that calls `func` of a WebAssembly module; return its id.

        `module` is the raw .wasm bytes, sent base64-encoded. To send a module
        uploaded with upload_module instead, pass None and its reference as
        `module_ref`. For a WASI command (`_start`), `args` are its argv
        strings. Tasks with a higher `priority` are claimed first, and
        `delay_seconds` keeps the task from being claimed before that time.
        """
        task = TaskRequest(
            func=func, args=args, module=module, module_ref=module_ref, timeout_seconds=timeout_seconds,
            max_retries=max_retries, stdin=stdin, env=env, priority=priority, delay_seconds=delay_seconds,
        )
        data = self._request("POST", "/tasks", json={"task": task.to_json()})
        return int(data["task_id"])

    def publish_many(self, tasks: Sequence[TaskRequest | Mapping[str, Any]]) -> list[int]:
        """Publish up to 1000 tasks in one request, all or none; return their ids in order.

        Each task is a TaskRequest or a mapping already in the JSON form of
        POST /tasks. When one task is invalid, the server stores none and the
        ApiError's message names it as "tasks[i]". Uploading the module once
        and publishing by `module_ref` keeps the request small.
        """
        if not 1 <= len(tasks) <= MAX_PUBLISH_BATCH:
            raise ValueError(f"publish_many takes 1 to {MAX_PUBLISH_BATCH} tasks, got {len(tasks)}; split the list")
        bodies = [task.to_json() if isinstance(task, TaskRequest) else dict(task) for task in tasks]
        data = self._request("POST", "/tasks", json={"tasks": bodies})
        return [int(task_id) for task_id in data["task_ids"]]

    def upload_module(self, module: bytes) -> str:
        """Store a module on the server and return its reference, "sha256:<hex>".

        Uploading the same bytes again is harmless and returns the same reference.
        """
        data = self._request("POST", "/modules", content=module, content_type=WASM_MEDIA_TYPE)
        return str(data["module"])

    def download_module(self, sha256: str) -> bytes:
        """Return the bytes of a stored module, by hex digest or "sha256:<hex>" reference.

        Raises ApiError 404 when the server does not have the module. The bytes
        are returned as received; callers that need certainty compare their
        SHA-256 with the digest.
        """
        digest = sha256.removeprefix(MODULE_REFERENCE_PREFIX).lower()
        return self._request("GET", f"/modules/{digest}", raw=True)

    def get_task(self, task_id: int) -> dict[str, Any]:
        """Return the state of one of the caller's tasks. Raises ApiError 404 for others."""
        return self._request("GET", f"/tasks/{task_id}")["task"]

    def next_result(self, *, wait: float = 0) -> dict[str, Any] | None:
        """Deliver the caller's oldest undelivered result, or return None when there is none.

        With `wait` (seconds, at most 30) the server holds the request until a
        result is ready or the time is up. The server delivers each result
        once, so a returned result is not returned again by a later call.
        """
        params = _wait_params(wait)
        data = self._request("GET", "/results", params=params or None, none_on_404=True, wait=wait)
        return None if data is None else data["result"]

    def next_results(self, max: int = MAX_FETCH_BATCH, *, wait: float = 0) -> list[dict[str, Any]]:
        """Deliver up to `max` (1 to 100) of the caller's oldest results; return [] when there is none.

        `wait` works as in next_result. Each result is delivered once.
        """
        _check_batch_size("max", max, MAX_FETCH_BATCH)
        params = {"max": max, **_wait_params(wait)}
        data = self._request("GET", "/results", params=params, none_on_404=True, wait=wait)
        if data is None:
            return []
        # A server without batch delivery ignores max and returns one result.
        return list(data["results"]) if "results" in data else [data["result"]]

    # Worker side

    @overload
    def claim(self, *, max: None = None, wait: float = 0, inline_module: bool = True) -> dict[str, Any] | None: ...

    @overload
    def claim(self, *, max: int, wait: float = 0, inline_module: bool = True) -> list[dict[str, Any]]: ...

    def claim(
        self, *, max: int | None = None, wait: float = 0, inline_module: bool = True
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        """Claim available tasks under a lease, highest priority and oldest first.

        Without `max`, return one task or None when none is available. With
        `max` (1 to 100), return a list of up to `max` tasks, empty when none
        is available. With `wait` (seconds, at most 30) the server holds the
        request until a task is available or the time is up. With
        `inline_module=False` a task carries only "module_sha256", and the
        module is fetched with download_module when it is not cached.
        """
        params: dict[str, Any] = {}
        if max is not None:
            _check_batch_size("max", max, MAX_FETCH_BATCH)
            params["max"] = max
        params.update(_wait_params(wait))
        if not inline_module:
            params["inline_module"] = "false"
        data = self._request("GET", "/tasks", params=params or None, none_on_404=True, wait=wait)
        if max is None:
            return None if data is None else data["task"]
        if data is None:
            return []
        # A server without batch claims ignores max and returns one task.
        return list(data["tasks"]) if "tasks" in data else [data["task"]]

    def complete(self, task_id: int, result: Any, lease_token: str, *, created_by: int | None = None) -> dict[str, Any]:
        """Report the result of a claimed task.

        Raises ApiError 409 when the lease is no longer the current one or the
        task already finished: the server will never accept this outcome.
        """
        body: dict[str, Any] = {"task_id": task_id, "result": result, "lease_token": lease_token}
        if created_by is not None:
            body["created_by"] = created_by
        return self._request("POST", "/results", json=body)

    def complete_many(self, reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Report up to 1000 results in one request; return one answer per report, in order.

        Each report has the keys of complete(): "task_id", "result",
        "lease_token" and optionally "created_by". An answer is either
        {"task_id", "status", "retried"} (accepted) or {"task_id", "error":
        {"code", "message"}} (rejected). An error with code 404 or 409 is
        final, so that outcome must not be sent again. The request as a whole
        raises ApiError only when it fails entirely.
        """
        return self._report_many("/results", reports)

    def fail(self, task_id: int, error_msg: str, lease_token: str, retryable: bool = True) -> dict[str, Any]:
        """Report that a claimed task failed; with `retryable=False` the server does not retry it."""
        body: dict[str, Any] = {"task_id": task_id, "error_msg": error_msg, "lease_token": lease_token}
        if not retryable:
            body["retryable"] = False
        return self._request("POST", "/failures", json=body)

    def fail_many(self, reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Report up to 1000 failed attempts in one request; answers are as in complete_many.

        Each report has the keys "task_id", "error_msg", "lease_token" and
        optionally "retryable" (default true) and "created_by".
        """
        return self._report_many("/failures", reports)

    def heartbeat(self, task_id: int, lease_token: str) -> dict[str, Any]:
        """Extend the lease of a claimed task; the data contains the new `lease_expires_at`."""
        return self._request("POST", f"/tasks/{task_id}/heartbeat", json={"lease_token": lease_token})

    def release(self, task_id: int, lease_token: str) -> dict[str, Any]:
        """Give a claimed task back to the queue without counting the attempt."""
        return self._request("POST", f"/tasks/{task_id}/release", json={"lease_token": lease_token})

    # Service

    def ping(self) -> dict[str, Any]:
        """Return the server's `{"message": "pong"}`."""
        return self._request("GET", "/ping", enveloped=False)

    def health(self) -> dict[str, Any]:
        """Return the server's health report: status, queue counts, database and version."""
        return self._request("GET", "/health", enveloped=False)

    def _report_many(self, path: str, reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        _check_batch_size("reports", len(reports), MAX_REPORT_BATCH)
        data = self._request("POST", path, json=[dict(report) for report in reports])
        answers = list(data["results"])
        if len(answers) != len(reports):
            raise ApiError(f"server returned {len(answers)} items for {len(reports)} reports", 200, "POST", path)
        return answers

    # Transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, Any] | None = None,
        enveloped: bool = True,
        none_on_404: bool = False,
        raw: bool = False,
        wait: float = 0,
    ) -> Any:
        """Send one request and return the envelope's data (or the body when `raw`).

        `wait` is how long the server may hold the request; it is added to
        the read timeout, so a long poll does not time out on this side.
        """
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        timeout = httpx.Timeout(self.timeout_seconds, read=self.timeout_seconds + wait)
        try:
            response = self._http.request(
                method, path, json=json, content=content, params=params, headers=headers or None, timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise ApiError(f"request to {self.base_url} timed out", None, method, path) from exc
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc}", None, method, path) from exc

        if response.status_code == 404 and none_on_404:
            return None
        if response.is_error:
            raise ApiError(_error_message(response), response.status_code, method, path)
        if raw:
            return response.content

        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(
                f"response is not JSON: {_quote_body(response)}", response.status_code, method, path
            ) from exc
        if not enveloped:
            return body
        if not isinstance(body, dict) or "data" not in body:
            raise ApiError(
                f"response has no 'data' member: {_quote_body(response)}", response.status_code, method, path
            )
        return body["data"]


def _wait_params(wait: float) -> dict[str, float]:
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise ValueError(f"wait={wait} is invalid: it must be 0 to {MAX_WAIT_SECONDS:g} seconds")
    return {"wait": wait} if wait else {}


def _check_batch_size(name: str, size: int, limit: int) -> None:
    if not 1 <= size <= limit:
        raise ValueError(f"{name}={size} is invalid: it must be 1 to {limit}")


def _error_message(response: httpx.Response) -> str:
    """Return the message of an error envelope, or the start of a body that is not one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        if isinstance(message, str) and message:
            return message
    return _quote_body(response) or response.reason_phrase


def _quote_body(response: httpx.Response) -> str:
    text = response.text.strip()
    if len(text) > MAX_QUOTED_BODY_CHARS:
        return text[:MAX_QUOTED_BODY_CHARS] + "..."
    return text
