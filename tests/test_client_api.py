"""RainChanelClient against an in-process httpx.MockTransport."""

import base64
import json

import httpx
import pytest

import rainchanel

from rainchanel.client import ApiError, RainChanelClient, TaskRequest
from rainchanel.errors import ConfigError, RainChanelError


def make_client(handler, token="t0"):
    return RainChanelClient("http://rainchanel.test", token=token, transport=httpx.MockTransport(handler))


def envelope(data, status=200):
    return httpx.Response(status, json={"data": data})


def error(status, message):
    return httpx.Response(status, json={"error": {"code": status, "message": message}})


def test_client_rejects_url_without_scheme():
    with pytest.raises(ConfigError) as caught:
        RainChanelClient("localhost:8080")

    assert "must start with http:// or https://" in str(caught.value)
    assert isinstance(caught.value, RainChanelError)


def test_client_sends_user_agent():
    seen = []

    def handler(request):
        seen.append(request.headers["user-agent"])
        return envelope({"status": "ok"})

    make_client(handler).ping()

    assert seen == [f"rainchanel-client/{rainchanel.__version__}"]


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


def test_client_claim_batch_sends_parameters():
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"tasks": [{"id": 1}, {"id": 2}]})

    tasks = make_client(handler).claim(max=5, wait=2.5, inline_module=False)

    assert tasks == [{"id": 1}, {"id": 2}]
    assert dict(seen[0].url.params) == {"max": "5", "wait": "2.5", "inline_module": "false"}


def test_client_claim_batch_empty_on_404():
    def handler(request):
        return error(404, "no task available")

    assert make_client(handler).claim(max=3) == []


def test_client_claim_batch_accepts_single_form():
    def handler(request):
        return envelope({"task": {"id": 4}})

    assert make_client(handler).claim(max=3) == [{"id": 4}]


def test_client_claim_without_options_sends_no_parameters():
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"task": {"id": 4}})

    make_client(handler).claim()

    assert seen[0].url.query == b""


def test_client_long_poll_extends_read_timeout():
    seen = []

    def handler(request):
        seen.append(request)
        return error(404, "no task available")

    client = RainChanelClient("http://rainchanel.test", token="t", timeout=10, transport=httpx.MockTransport(handler))
    client.claim(max=1, wait=20)
    client.next_result()

    assert seen[0].extensions["timeout"]["read"] == 30
    assert seen[1].extensions["timeout"]["read"] == 10


@pytest.mark.parametrize("wait", [-1, 31])
def test_client_rejects_invalid_wait(wait):
    client = make_client(lambda request: envelope({}))

    with pytest.raises(ValueError, match="wait="):
        client.claim(wait=wait)


def test_client_publish_many_returns_ids():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"task_ids": [5, 6]})

    ids = make_client(handler).publish_many([
        TaskRequest("add", [1, 2], module_ref="ab" * 32, priority=3),
        TaskRequest("add", [3, 4], module=b"\0asm", delay_seconds=1.5),
    ])

    assert ids == [5, 6]
    first, second = bodies[0]["tasks"]
    assert first == {"func": "add", "args": [1, 2], "module": "sha256:" + "ab" * 32, "priority": 3}
    assert base64.b64decode(second["wasm_module"]) == b"\0asm"
    assert second["delay_seconds"] == 1.5


def test_client_publish_by_reference():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"task_id": 8})

    make_client(handler).publish(None, "add", [1, 2], module_ref="sha256:" + "cd" * 32, priority=-1)

    assert bodies[0]["task"] == {"func": "add", "args": [1, 2], "module": "sha256:" + "cd" * 32, "priority": -1}


def test_client_publish_needs_one_module_form():
    client = make_client(lambda request: envelope({"task_id": 1}))

    with pytest.raises(ValueError, match="either module"):
        client.publish(None, "add")
    with pytest.raises(ValueError, match="either module"):
        client.publish(b"\0asm", "add", module_ref="sha256:" + "ab" * 32)


def test_client_upload_module_sends_raw_bytes():
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"sha256": "ab" * 32, "module": "sha256:" + "ab" * 32, "size_bytes": 4, "functions": ["add"]})

    reference = make_client(handler).upload_module(b"\0asm")

    assert reference == "sha256:" + "ab" * 32
    assert seen[0].url.path == "/modules"
    assert seen[0].headers["content-type"] == "application/wasm"
    assert seen[0].content == b"\0asm"


def test_client_download_module_returns_bytes():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, content=b"\0asm\1\0\0\0", headers={"content-type": "application/wasm"})

    module = make_client(handler).download_module("sha256:" + "AB" * 32)

    assert module == b"\0asm\1\0\0\0"
    assert seen[0].url.path == "/modules/" + "ab" * 32


def test_client_download_unknown_module_raises():
    def handler(request):
        return error(404, "module not found")

    with pytest.raises(ApiError) as caught:
        make_client(handler).download_module("ab" * 32)

    assert caught.value.status == 404


def test_client_complete_many_returns_answers():
    bodies = []
    answers = [
        {"task_id": 1, "status": "completed", "retried": False},
        {"task_id": 2, "error": {"code": 409, "message": "lease lost"}},
    ]

    def handler(request):
        bodies.append(json.loads(request.content))
        return envelope({"results": answers})

    reports = [
        {"task_id": 1, "result": 5, "lease_token": "L1"},
        {"task_id": 2, "result": 6, "lease_token": "L2"},
    ]
    returned = make_client(handler).complete_many(reports)

    assert returned == answers
    assert bodies[0] == reports


def test_client_fail_many_posts_list():
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"results": [{"task_id": 1, "status": "failed", "retried": False}]})

    make_client(handler).fail_many([{"task_id": 1, "error_msg": "trap", "lease_token": "L", "retryable": False}])

    assert seen[0].url.path == "/failures"
    assert json.loads(seen[0].content) == [{"task_id": 1, "error_msg": "trap", "lease_token": "L", "retryable": False}]


def test_client_report_many_checks_answer_count():
    def handler(request):
        return envelope({"results": []})

    with pytest.raises(ApiError, match="0 items for 1 reports"):
        make_client(handler).complete_many([{"task_id": 1, "result": 5, "lease_token": "L"}])


def test_client_next_results_batch():
    seen = []

    def handler(request):
        seen.append(request)
        return envelope({"results": [{"task_id": 1}, {"task_id": 2}]})

    results = make_client(handler).next_results(10, wait=5)

    assert [result["task_id"] for result in results] == [1, 2]
    assert dict(seen[0].url.params) == {"max": "10", "wait": "5"}


def test_client_next_results_empty_on_404():
    def handler(request):
        return error(404, "no undelivered result")

    assert make_client(handler).next_results(3) == []
