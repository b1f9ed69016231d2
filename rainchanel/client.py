"""Synchronous Python client for the RainChanel HTTP API.

Each method maps to one route and returns the `data` member of the server's
envelope. Every failure, whether the server rejected the request or the
request never reached it, raises ApiError.
"""

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from rainchanel.errors import RainChanelError

DEFAULT_SERVER_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_SECONDS = 30.0

# Longest part of a non-JSON error body quoted in an ApiError message.
MAX_QUOTED_BODY_CHARS = 200


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


class RainChanelClient:
    """Client for one RainChanel server.

    Methods take their optional parameters as keyword-only arguments, so new
    request options (long polling, batches) can be added without breaking
    callers. An instance keeps one connection pool; use one instance per
    thread, or close it with `close()` or a `with` block.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

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
        module: bytes,
        func: str,
        args: Sequence[Any] = (),
        *,
        timeout_seconds: int | None = None,
        max_retries: int | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Publish a task that calls `func` of the WebAssembly `module`; return its id.

        `module` is the raw .wasm bytes; they are sent base64-encoded. For a
        WASI command (`_start`), `args` are its argv strings.
        """
        task: dict[str, Any] = {
            "wasm_module": base64.b64encode(module).decode("ascii"),
            "func": func,
            "args": list(args),
        }
        if timeout_seconds is not None:
            task["timeout_seconds"] = timeout_seconds
        if max_retries is not None:
            task["max_retries"] = max_retries
        if stdin is not None:
            task["stdin"] = stdin
        if env is not None:
            task["env"] = dict(env)
        data = self._request("POST", "/tasks", json={"task": task})
        return int(data["task_id"])

    def get_task(self, task_id: int) -> dict[str, Any]:
        """Return the state of one of the caller's tasks. Raises ApiError 404 for others."""
        return self._request("GET", f"/tasks/{task_id}")["task"]

    def next_result(self) -> dict[str, Any] | None:
        """Deliver the caller's oldest undelivered result, or return None when there is none.

        The server delivers each result once, so a returned result is not
        returned again by a later call.
        """
        data = self._request("GET", "/results", none_on_404=True)
        return None if data is None else data["result"]

    # Worker side

    def claim(self) -> dict[str, Any] | None:
        """Claim the oldest available task under a lease, or return None when none is available."""
        data = self._request("GET", "/tasks", none_on_404=True)
        return None if data is None else data["task"]

    def complete(self, task_id: int, result: Any, lease_token: str, *, created_by: int | None = None) -> dict[str, Any]:
        """Report the result of a claimed task.

        Raises ApiError 409 when the lease is no longer the current one or the
        task already finished: the server will never accept this outcome.
        """
        body: dict[str, Any] = {"task_id": task_id, "result": result, "lease_token": lease_token}
        if created_by is not None:
            body["created_by"] = created_by
        return self._request("POST", "/results", json=body)

    def fail(self, task_id: int, error_msg: str, lease_token: str, retryable: bool = True) -> dict[str, Any]:
        """Report that a claimed task failed; with `retryable=False` the server does not retry it."""
        body: dict[str, Any] = {"task_id": task_id, "error_msg": error_msg, "lease_token": lease_token}
        if not retryable:
            body["retryable"] = False
        return self._request("POST", "/failures", json=body)

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

    # Transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        enveloped: bool = True,
        none_on_404: bool = False,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise ApiError(f"request to {self.base_url} timed out", None, method, path) from exc
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach {self.base_url}: {exc}", None, method, path) from exc

        if response.status_code == 404 and none_on_404:
            return None
        if response.is_error:
            raise ApiError(_error_message(response), response.status_code, method, path)

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
