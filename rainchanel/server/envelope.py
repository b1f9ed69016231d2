"""The response envelope: {"data": ...} on success, {"error": {...}} otherwise."""

from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from rainchanel.errors import RainChanelError

JSON_MEDIA_TYPE = "application/json"


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type=JSON_MEDIA_TYPE, headers=headers)


def ok(data: Any) -> Response:
    return json_response({"data": data})


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": status_code, "message": message}}, status_code, headers)


async def handle_domain_error(request: Request, exc: RainChanelError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return error_response(exc.status_code, exc.message, headers)


async def handle_validation_error(request: Request, exc: RequestValidationError) -> Response:
    # The earlier server returned 400 for every invalid body, so keep that
    # instead of FastAPI's 422.
    return error_response(400, describe_validation_errors(exc.errors()))


async def handle_http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = f"route not found: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, getattr(exc, "headers", None))


# Errors that only say "the body was not this branch of a union"; when the
# body matched the other branch better, its errors are the useful ones.
_UNION_MISMATCH_TYPES = {"model_attributes_type", "model_type", "list_type"}


def describe_validation_errors(errors: list[dict]) -> str:
    specific = [error for error in errors if error.get("type") not in _UNION_MISMATCH_TYPES]
    if specific and len(specific) < len(errors):
        errors = specific
    problems = []
    for error in errors[:5]:
        if error.get("type") == "json_invalid":
            problems.append(f"request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        if error.get("loc") == ("body",) and error.get("type") == "model_attributes_type":
            problems.append("request body must be a JSON object")
            continue
        if error.get("type") == "missing" and error.get("loc") == ("body",):
            problems.append("request body is missing; send a JSON object")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()) if not _is_union_tag(part))
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    return "invalid request: " + "; ".join(problems)


def _is_union_tag(part) -> bool:
    # FastAPI puts "body" and the union branch ("ResultReport",
    # "list[ResultReport]") into the location; neither names a field.
    return part == "body" or (isinstance(part, str) and (part[:1].isupper() or part.startswith("list[")))
