"""RainChanelClient against an in-process httpx.MockTransport."""

import base64
import json

import httpx
import pytest

from rainchanel.client import ApiError, RainChanelClient
from rainchanel.errors import RainChanelError


def make_client(handler, token="t0"):
    return RainChanelClient("http://rainchanel.test", token=token, transport=httpx.MockTransport(handler))


def envelope(data, status=200):
    return httpx.Response(status, json={"data": data})


def error(status, message):
    return httpx.Response(status, json={"error": {"code": status, "message": message}})


def test_client_login_keeps_token():
    seen = []

    def handler(request):
        seen.append(request)
        if request.url.path == "/login":
            return envelope({"token": "t1", "user_id": 1, "username": "ann", "expires_at": "2030-01-01T00:00:00Z"})
        return envelope({"task": {"id": 3}})

    client = make_client(handler, token=None)
    data = client.login("ann", "secret")
    client.get_task(3)

    assert data["user_id"] == 1
    assert client.token == "t1"
    assert json.loads(seen[0].content) == {"username": "ann", "password": "secret"}
    assert "authorization" not in seen[0].headers
    assert seen[1].headers["authorization"] == "Bearer t1"


def test_client_publish_encodes_module():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"task_id": 42})

    client = make_client(handler)
    task_id = client.publish(b"\0asm\1\0\0\0", "add", [2, 3], timeout_seconds=5, env={"A": "1"}, stdin="hi")

    assert task_id == 42
    task = bodies[0]["task"]
    assert base64.b64decode(task["wasm_module"]) == b"\0asm\1\0\0\0"
    assert task["func"] == "add"
    assert task["args"] == [2, 3]
    assert task["timeout_seconds"] == 5
    assert task["env"] == {"A": "1"}
    assert task["stdin"] == "hi"
    assert "max_retries" not in task


def test_client_publish_keeps_large_i64_exact():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"task_id": 1})

    make_client(handler).publish(b"\0asm", "mul64", [2**62 + 1, -(2**63)])

    assert bodies[0]["task"]["args"] == [2**62 + 1, -(2**63)]


def test_client_error_envelope_raises_api_error():
    def handler(request):
        return error(400, "unknown function 'nope': exported functions: add")

    with pytest.raises(ApiError) as caught:
        make_client(handler).publish(b"\0asm", "nope")

    assert isinstance(caught.value, RainChanelError)
    assert caught.value.status == 400
    assert caught.value.message == "unknown function 'nope': exported functions: add"
    assert caught.value.method == "POST"
    assert caught.value.path == "/tasks"
    assert not caught.value.is_transient


def test_client_non_json_error_quotes_body():
    def handler(request):
        return httpx.Response(502, text="Bad Gateway from proxy")

    with pytest.raises(ApiError) as caught:
        make_client(handler).claim()

    assert caught.value.status == 502
    assert caught.value.message == "Bad Gateway from proxy"
    assert caught.value.is_transient


def test_client_transport_error_has_no_status():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ApiError) as caught:
        make_client(handler).ping()

    assert caught.value.status is None
    assert caught.value.is_transient
    assert "cannot reach http://rainchanel.test" in caught.value.message


def test_client_timeout_has_no_status():
    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ApiError) as caught:
        make_client(handler).health()

    assert caught.value.status is None
    assert caught.value.message == "request to http://rainchanel.test timed out"


def test_client_none_on_404():
    def handler(request):
        return error(404, "no task available")

    client = make_client(handler)

    assert client.claim() is None
    assert client.next_result() is None


def test_client_get_task_404_raises():
    def handler(request):
        return error(404, "task 9 not found")

    with pytest.raises(ApiError) as caught:
        make_client(handler).get_task(9)

    assert caught.value.status == 404


def test_client_claim_returns_task():
    task = {"id": 7, "func": "add", "lease_token": "L", "attempt": 1}

    def handler(request):
        assert request.method == "GET"
        assert request.url.path == "/tasks"
        return envelope({"task": task})

    assert make_client(handler).claim() == task


@pytest.mark.parametrize(
    ("call", "path", "body"),
    [
        (lambda c: c.complete(7, [1, 2], "L", created_by=3), "/results", {"task_id": 7, "result": [1, 2], "lease_token": "L", "created_by": 3}),
        (lambda c: c.fail(7, "trap", "L"), "/failures", {"task_id": 7, "error_msg": "trap", "lease_token": "L"}),
        (lambda c: c.fail(7, "trap", "L", retryable=False), "/failures", {"task_id": 7, "error_msg": "trap", "lease_token": "L", "retryable": False}),
        (lambda c: c.heartbeat(7, "L"), "/tasks/7/heartbeat", {"lease_token": "L"}),
        (lambda c: c.release(7, "L"), "/tasks/7/release", {"lease_token": "L"}),
        (lambda c: c.register("ann", "pw"), "/register", {"username": "ann", "password": "pw"}),
    ],
)
def test_client_post_routes_send_body(call, path, body):
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"message": "ok"})

    call(make_client(handler))

    assert seen[0].method == "POST"
    assert seen[0].url.path == path
    assert json.loads(seen[0].content) == body


def test_client_ping_reads_plain_json():
    def handler(request):
        return httpx.Response(200, json={"message": "pong"})

    assert make_client(handler).ping() == {"message": "pong"}


def test_client_missing_data_member_raises():
    def handler(request):
        return httpx.Response(200, json={"unexpected": 1})

    with pytest.raises(ApiError) as caught:
        make_client(handler).get_task(1)

    assert "no 'data' member" in caught.value.message


def test_api_error_str_names_request():
    exc = ApiError("lease is not current", 409, "POST", "/results")

    assert str(exc) == "POST /results failed (HTTP 409): lease is not current"
    assert exc.status_code == 409
