"""Every error response is {"error": {"code", "message"}}, but /ping and /health are not enveloped."""

import json


def assert_envelope(response, status_code: int) -> str:
    body = response.json()
    assert response.status_code == status_code, response.text
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == status_code, body
    assert body["error"]["message"], body
    return body["error"]["message"]


async def test_unknown_route_404(client):
    response = await client.get("/no/such/route")

    message = assert_envelope(response, 404)
    assert "/no/such/route" in message


async def test_wrong_method_405(client):
    response = await client.delete("/tasks")

    message = assert_envelope(response, 405)
    assert "DELETE" in message


async def test_malformed_json_400(client):
    response = await client.post(
        "/register", content=b'{"username": "bob", ', headers={"Content-Type": "application/json"}
    )

    message = assert_envelope(response, 400)
    assert "not valid JSON" in message


async def test_missing_field_400(client):
    response = await client.post("/register", json={"username": "bobby"})

    message = assert_envelope(response, 400)
    assert "password" in message


async def test_wrong_type_400(client, worker):
    response = await client.post("/results", json={"task_id": "5", "result": 1}, headers=worker["headers"])

    message = assert_envelope(response, 400)
    assert "task_id" in message


async def test_body_over_limit_413(make_client):
    client = await make_client(limits={"max_body_bytes": 2048})
    body = json.dumps({"username": "bobby", "password": "p" * 4000}).encode()

    response = await client.post("/register", content=body, headers={"Content-Type": "application/json"})

    message = assert_envelope(response, 413)
    assert "2048" in message


async def test_errors_have_no_detail_key(client, owner):
    responses = [
        await client.get("/no/such/route"),
        await client.delete("/tasks"),
        await client.post("/register", content=b"{", headers={"Content-Type": "application/json"}),
        await client.post("/register", json={}),
        await client.post("/register", json=[1, 2]),
        await client.get("/tasks"),
        await client.get("/tasks?max=0", headers=owner["headers"]),
        await client.get("/tasks/not-a-number", headers=owner["headers"]),
        await client.get("/tasks/999999", headers=owner["headers"]),
        await client.post("/tasks", json={}, headers=owner["headers"]),
        await client.post("/tasks/1/heartbeat", json={}, headers=owner["headers"]),
    ]

    for response in responses:
        assert response.status_code >= 400, response.request.url
        assert "detail" not in response.json(), response.text
        assert set(response.json()) == {"error"}, response.text


async def test_ping_and_health_not_enveloped(client):
    ping = await client.get("/ping")
    health = await client.get("/health")

    assert ping.json() == {"message": "pong"}
    assert health.json()["status"] == "healthy"
    assert "data" not in health.json()


async def test_body_without_content_type_read_as_json(client):
    body = json.dumps({"username": "gina", "password": "secret-password"}).encode()

    response = await client.post("/register", content=body)

    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["data"]["user_id"] > 0
