"""POST /register and POST /login."""

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from rainchanel.errors import Unauthorized
from rainchanel.server.auth import INVALID_CREDENTIALS, check_new_password, hash_password, verify_password
from rainchanel.server.envelope import ok
from rainchanel.server.schemas import Credentials, LoginRequest
from rainchanel.server.services import Services, get_services
from rainchanel.store.clock import MICROSECONDS_PER_SECOND, to_rfc3339

router = APIRouter()


@router.post("/register")
async def register(body: Credentials, services: Services = Depends(get_services)):
    check_new_password(body.password)
    # bcrypt is deliberately slow; keep it off the event loop.
    password_hash = await run_in_threadpool(hash_password, body.password)
    user_id = await services.accounts.create_user(body.username, password_hash)
    return ok({"message": "user registered successfully", "user_id": user_id})


@router.post("/login")
async def login(body: LoginRequest, services: Services = Depends(get_services)):
    user = await services.accounts.find_user(body.username)
    password_hash = user.password_hash if user else None
    if not await run_in_threadpool(verify_password, body.password, password_hash) or user is None:
        # One message for an unknown user and a wrong password, so the
        # response does not reveal which names exist.
        raise Unauthorized(INVALID_CREDENTIALS)
    token, expires_at = services.tokens.issue(user.id, user.username)
    return ok(
        {
            "token": token,
            "user_id": user.id,
            "username": user.username,
            "expires_at": to_rfc3339(expires_at * MICROSECONDS_PER_SECOND),
        }
    )
