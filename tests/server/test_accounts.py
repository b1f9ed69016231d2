"""Registration and login: name and password bounds, exact names, bcrypt hashes."""

from datetime import datetime

from sqlalchemy import select

from rainchanel.store.tables import users
from tests.server.api import register_and_login


async def register(client, username: str, password: str = "secret-password"):
    return await client.post("/register", json={"username": username, "password": password})


async def login(client, username: str, password: str = "secret-password"):
    return await client.post("/login", json={"username": username, "password": password})


async def test_register_username_length_bounds(client):
    too_short = await register(client, "ab")
    too_long = await register(client, "u" * 51)
    longest = await register(client, "u" * 50)
    longest_four_byte = await register(client, "😀" * 50)
    multibyte = await register(client, "日本語")

    assert too_short.status_code == 400
    assert "username" in too_short.json()["error"]["message"]
    assert too_long.status_code == 400
    assert "username" in too_long.json()["error"]["message"]
    assert longest.status_code == 200
    assert longest_four_byte.status_code == 200, longest_four_byte.text
    assert multibyte.status_code == 200
    assert (await login(client, "😀" * 50)).status_code == 200


async def test_register_rejects_control_characters(client):
    for username in ("bob\n", "bo\tb", "bob\x00x", "bob\x7f"):
        response = await register(client, username)

        assert response.status_code == 400, username
        assert "control characters" in response.json()["error"]["message"], username


async def test_register_password_byte_bounds(client):
    too_short = await register(client, "user5", "x" * 5)
    longest = await register(client, "user72", "x" * 72)
    too_long = await register(client, "user73", "x" * 73)
    three_byte = await register(client, "user3b", "€" * 24)

    assert too_short.status_code == 400
    assert "password" in too_short.json()["error"]["message"]
    assert longest.status_code == 200
    assert too_long.status_code == 400
    assert "password" in too_long.json()["error"]["message"]
    assert three_byte.status_code == 200
    assert (await login(client, "user3b", "€" * 24)).status_code == 200


async def test_register_taken_username(client):
    first = await register(client, "alice")
    second = await register(client, "alice", "another-password")

    assert first.status_code == 200
    assert second.status_code == 409
    assert second.json()["error"]["code"] == 409


async def test_usernames_compared_exactly(client):
    passwords = {"Bob": "password-upper", "bob": "password-lower", "bob ": "password-space"}
    ids = {}
    for username, password in passwords.items():
        response = await register(client, username, password)
        assert response.status_code == 200, username
        ids[username] = response.json()["data"]["user_id"]

    for username, password in passwords.items():
        response = await login(client, username, password)

        assert response.status_code == 200, username
        assert response.json()["data"]["user_id"] == ids[username]
        assert response.json()["data"]["username"] == username
    assert len(set(ids.values())) == 3
    assert (await login(client, "bob", "password-upper")).status_code == 401


async def test_login_failures_share_message(client):
    await register(client, "carol")

    wrong_password = await login(client, "carol", "wrong-password")
    unknown_user = await login(client, "nobody", "secret-password")
    long_password = await login(client, "carol", "p" * 100)

    assert wrong_password.status_code == 401
    assert unknown_user.status_code == 401
    assert long_password.status_code == 401
    assert wrong_password.json() == unknown_user.json()
    assert long_password.json() == unknown_user.json()


async def test_login_response_fields(client):
    registered = await register(client, "dave")

    response = await login(client, "dave")

    data = response.json()["data"]
    assert response.status_code == 200
    assert data["user_id"] == registered.json()["data"]["user_id"]
    assert data["username"] == "dave"
    assert data["token"].count(".") == 2
    assert data["expires_at"].endswith("Z")
    assert datetime.fromisoformat(data["expires_at"]).tzinfo is not None


async def test_password_stored_as_bcrypt(client, services):
    await register_and_login(client, "erin", "erin-password")

    async with services.db.engine.connect() as connection:
        stored = await connection.scalar(select(users.c.password_hash).where(users.c.username == "erin"))

    assert stored.startswith(("$2b$", "$2a$"))
    assert "erin-password" not in stored
