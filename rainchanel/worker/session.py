"""A worker's authenticated connection to the server, with retries and re-login.

Each worker thread owns one ServerSession (one httpx connection pool) and all
sessions of a process share one Credentials, so a token refreshed by one
thread is used by the others.
"""

import os
import random
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import httpx

from rainchanel import __version__
from rainchanel.client import ApiError, RainChanelClient
from rainchanel.logs import get_logger

log = get_logger("rainchanel.worker")

T = TypeVar("T")

# Delays between attempts of a request that failed transiently.
RETRY_INITIAL_DELAY_SECONDS = 0.1
RETRY_MAX_DELAY_SECONDS = 5.0


class Backoff:
    """Exponential delays with jitter: initial, doubling, capped at maximum."""

    def __init__(self, initial_seconds: float, max_seconds: float, jitter: float = 0.2) -> None:
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds
        self.jitter = jitter
        self._next_seconds = initial_seconds

    def next_delay(self) -> float:
        """Return the next delay and double the one after it."""
        delay = self._next_seconds
        self._next_seconds = min(self._next_seconds * 2, self.max_seconds)
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next_seconds = self.initial_seconds


class GaveUp(Exception):
    """A retried request was abandoned because the worker is shutting down."""


class Credentials:
    """The worker account's name, password and current token, shared by all threads."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self._lock = threading.Lock()
        self.token: str | None = None

    def refresh(self, client: RainChanelClient, rejected_token: str | None) -> str:
        """Log in again unless another thread already replaced `rejected_token`; return the current token.

        Raises ApiError when the login fails.
        """
        with self._lock:
            if self.token is None or self.token == rejected_token:
                data = client.login(self.username, self._password)
                self.token = data["token"]
                log.info("worker_logged_in", username=self.username, expires_at=data.get("expires_at"))
            return self.token


def worker_user_agent() -> str:
    """Return the User-Agent of this worker process, which names its host and pid for the server's logs."""
    return f"rainchanel-worker/{__version__} ({socket.gethostname()}; pid {os.getpid()})"


class ServerSession:
    """Sends requests for one worker thread, retrying transient failures.

    A transient failure (no response, HTTP 429 or 5xx) is retried after a
    backoff until `give_up` is set; a 401 leads to a fresh login and a retry.
    Other errors are raised as ApiError.
    """

    def __init__(
        self,
        server_url: str,
        credentials: Credentials,
        give_up: threading.Event,
        timeout_seconds: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.client = RainChanelClient(
            server_url, timeout=timeout_seconds, transport=transport, user_agent=worker_user_agent()
        )
        self.credentials = credentials
        self.give_up = give_up

    def close(self) -> None:
        self.client.close()

    def call(self, action: str, request: Callable[[RainChanelClient], T], **fields: object) -> T:
        """Run `request` with this session's client until it succeeds or fails for good.

        `action` and `fields` name the request in retry logs. Raises GaveUp
        when `give_up` is set while retrying, and ApiError for a
        non-transient error.
        """
        backoff = Backoff(RETRY_INITIAL_DELAY_SECONDS, RETRY_MAX_DELAY_SECONDS)
        failures = 0
        while True:
            try:
                self._ensure_token()
                response = request(self.client)
            except ApiError as exc:
                if exc.status == 401:
                    self._forget_token()
                elif not exc.is_transient:
                    raise
                failures += 1
                delay = backoff.next_delay()
                # Every retry is logged, with the number of the attempt that
                # failed. The backoff limits this to about one line per
                # RETRY_MAX_DELAY_SECONDS in each thread while the server is down.
                log.warning(
                    "request_retrying", action=action, error=str(exc), status=exc.status,
                    attempt=failures, delay_seconds=round(delay, 2), **fields,
                )
            else:
                if failures:
                    log.info("request_succeeded_after_retries", action=action, attempt=failures + 1, **fields)
                return response
            if self.give_up.wait(delay):
                raise GaveUp(f"{action} abandoned after {failures} failed attempts")

    def _ensure_token(self) -> None:
        if self.credentials.token is None:
            self.credentials.refresh(self.client, None)
        self.client.token = self.credentials.token

    def _forget_token(self) -> None:
        rejected = self.client.token
        self.client.token = None
        try:
            self.client.token = self.credentials.refresh(self.client, rejected)
        except ApiError as exc:
            if exc.status == 401:
                # Wrong credentials are not transient: retrying cannot help.
                raise
            # A transient login failure is retried by the caller's loop.
            log.warning("login_failed", error=str(exc), status=exc.status)
