"""Modules by reference: upload once (POST /modules), fetch by hash (GET /modules/{sha256})."""

import re

import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from rainchanel.errors import InvalidRequest, NotFound, PayloadTooLarge
from rainchanel.server.auth import Principal
from rainchanel.server.envelope import ok
from rainchanel.server.services import Services, current_principal, get_services
from rainchanel.server.validation import decode_module

log = structlog.get_logger("rainchanel.modules")
router = APIRouter()

WASM_MEDIA_TYPE = "application/wasm"
WASM_MAGIC = b"\0asm"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@router.post("/modules")
async def upload_module(
    request: Request,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    """Store a module given as raw bytes, or as JSON {"wasm_module": "<base64>"}."""
    max_module_bytes = services.settings.limits.max_module_bytes
    wasm = await _read_module(request, max_module_bytes)
    sha256, info = await services.validator.validate(wasm)
    await services.modules.store(sha256, wasm)
    log.info("module_stored", module_sha256=sha256, size_bytes=len(wasm), owner=principal.user_id)
    return ok(
        {
            "sha256": sha256,
            "module": f"sha256:{sha256}",
            "size_bytes": len(wasm),
            "functions": sorted(info.functions),
        }
    )


async def _read_module(request: Request, max_module_bytes: int) -> bytes:
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    # curl --data-binary labels its body as form data by default, so such a
    # body arrives here labelled as JSON. The wasm magic number identifies it.
    if content_type != "application/json" or body.startswith(WASM_MAGIC):
        if len(body) > max_module_bytes:
            raise PayloadTooLarge(f"module is {len(body)} bytes, over the {max_module_bytes} byte limit")
        if not body:
            raise InvalidRequest("the request body is empty; send the module's bytes or JSON with wasm_module")
        return body
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("wasm_module"), str):
        raise InvalidRequest('send the module as raw bytes (Content-Type: application/wasm) or as {"wasm_module": "<base64>"}')
    return decode_module(payload["wasm_module"], max_module_bytes)


@router.get("/modules/{sha256}")
async def download_module(
    sha256: str,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    """Return the module's bytes as application/wasm."""
    digest = sha256.removeprefix("sha256:").lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise InvalidRequest(f"{sha256!r} is not a SHA-256 digest of 64 hex digits")
    wasm = await services.modules.load(digest)
    if wasm is None:
        raise NotFound(f"module sha256:{digest} not found")
    return Response(wasm, media_type=WASM_MEDIA_TYPE, headers={"Cache-Control": "public, max-age=31536000, immutable"})
