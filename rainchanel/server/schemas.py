"""Request bodies. Types are strict: "5" is not an integer and 1.0 is not a whole second."""

import unicodedata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

USERNAME_MIN_CHARS = 3
USERNAME_MAX_CHARS = 50


class RequestModel(BaseModel):
    # Unknown fields are ignored so newer clients can talk to this server.
    model_config = ConfigDict(strict=True, extra="ignore")


class Credentials(RequestModel):
    username: str
    password: str

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str) -> str:
        if not USERNAME_MIN_CHARS <= len(value) <= USERNAME_MAX_CHARS:
            raise ValueError(
                f"must be {USERNAME_MIN_CHARS} to {USERNAME_MAX_CHARS} characters long, got {len(value)}"
            )
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise ValueError("must not contain control characters")
        return value


class LoginRequest(RequestModel):
    # Any string may be tried; a wrong one is a 401, never a 400.
    username: str
    password: str


class TaskDraft(RequestModel):
    """One task as published; the module comes inline or by reference."""

    wasm_module: str | None = None
    module: str | None = Field(default=None, description='"sha256:<hex>" of a module uploaded before')
    func: str = Field(min_length=1, max_length=255)
    args: list[Any] = Field(default_factory=list)
    timeout_seconds: int | None = None
    max_retries: int | None = None
    stdin: str | None = None
    env: dict[str, str] | None = None
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    delay_seconds: float = Field(default=0, ge=0, le=365 * 86400)


class PublishRequest(RequestModel):
    task: TaskDraft | None = None
    tasks: list[TaskDraft] | None = None


class ResultReport(RequestModel):
    task_id: int
    # Required, and null is a valid result.
    result: Any = Field(...)
    created_by: int | None = None
    lease_token: str | None = None


class FailureReport(RequestModel):
    task_id: int
    error_msg: str
    created_by: int | None = None
    lease_token: str | None = None
    retryable: bool = True


class LeaseRequest(RequestModel):
    lease_token: str
