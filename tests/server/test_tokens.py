"""Bearer tokens: HS256 only, signed with the server's secret, 30 s of leeway."""

import base64
import json
import time

import jwt
import pytest

from tests.server.api import register_and_login
from tests.server.conftest import TEST_SECRET

# GET /results requires a valid token and returns 404 when no result is
# waiting, so 404 means the token was accepted and 401 that it was rejected.
PROTECTED_ROUTE = "/results"


def claims_for(user: dict, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "sub": str(user["user_id"]),
        "user_id": user["user_id"],
        "username": "owner",
        "iat": now,
        "exp": now + 3600,
    }
    return {**claims, **overrides}


def signed(claims: dict, secret: str = TEST_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


async def call_with(client, token: str):
    return await client.get(PROTECTED_ROUTE, headers={"Authorization": f"Bearer {token}"})


async def test_token_missing(client):
    response = await client.get(PROTECTED_ROUTE)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401
    assert "missing bearer token" in response.json()["error"]["message"]
    assert response.headers["www-authenticate"] == "Bearer"


async def test_token_malformed(client):
    for token in ("not-a-token", "a.b.c", "Zm9v.YmFy"):
        response = await call_with(client, token)

        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == 401, token


async def test_token_other_secret(client, owner):
    token = signed(claims_for(owner), secret="another-secret-" + "y" * 40)

    response = await call_with(client, token)

    assert response.status_code == 401
    assert "invalid token" in response.json()["error"]["message"]


async def test_token_alg_none(client, owner):
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(claims_for(owner)).encode()).rstrip(b"=")
    by_hand = f"{header.decode()}.{payload.decode()}."
    by_library = jwt.encode(claims_for(owner), None, algorithm="none")

    for token in (by_hand, by_library):
        response = await call_with(client, token)

        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == 401, token


async def test_token_expiry_leeway(client, owner):
    now = int(time.time())
    expired_long_ago = signed(claims_for(owner, iat=now - 3600, exp=now - 60))
    expired_recently = signed(claims_for(owner, iat=now - 3600, exp=now - 10))

    rejected = await call_with(client, expired_long_ago)
    accepted = await call_with(client, expired_recently)

    assert rejected.status_code == 401
    assert "expired" in rejected.json()["error"]["message"]
    assert accepted.status_code == 404


async def test_token_issued_slightly_ahead(client, owner):
    now = int(time.time())
    token = signed(claims_for(owner, iat=now + 10, exp=now + 3600))

    response = await call_with(client, token)

    assert response.status_code == 404


async def test_issued_token_claims(client):
    user = await register_and_login(client, "frank")
    token = user["headers"]["Authorization"].removeprefix("Bearer ")

    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sub"] == str(user["user_id"])
    assert claims["user_id"] == user["user_id"]
    assert claims["username"] == "frank"
    assert isinstance(claims["iat"], int)
    assert claims["exp"] > claims["iat"]
    assert abs(claims["iat"] - time.time()) < 60


def test_token_cached_verification_still_expires():
    from rainchanel.errors import Unauthorized
    from rainchanel.server.auth import TokenService

    service = TokenService(TEST_SECRET, expires_seconds=60, leeway_seconds=0)
    now = int(time.time())
    token = jwt.encode(
        {"sub": "7", "user_id": 7, "username": "cached", "iat": now, "exp": now + 1}, TEST_SECRET, algorithm="HS256"
    )
    first = service.verify(token)
    time.sleep(2.1)

    with pytest.raises(Unauthorized):
        service.verify(token)
    assert first.user_id == 7
