"""Publishing: base64 decoding, module and argument checks, limits, module storage."""

import base64
import hashlib

from sqlalchemy import func, select

from rainchanel.store.tables import modules, tasks
from tests.server.api import EXAMPLES, claim, get_task, module_base64, register_and_login

ADD_WASM = (EXAMPLES / "add.wasm").read_bytes()


def leb128(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            encoded.append(byte | 0x80)
        else:
            encoded.append(byte)
            return bytes(encoded)


def with_custom_section(wasm: bytes, payload_bytes: int) -> bytes:
    """Append a custom section (id 0) that contains payload_bytes of varied bytes."""
    name = b"padding"
    payload = bytes(i * 7 % 256 for i in range(payload_bytes))
    content = leb128(len(name)) + name + payload
    return wasm + b"\x00" + leb128(len(content)) + content


async def post_task(client, owner, wasm_module=None, func="add", args=(2, 3), **fields):
    task = {"wasm_module": wasm_module or module_base64("add.wasm"), "func": func, "args": list(args), **fields}
    return await client.post("/tasks", json={"task": task}, headers=owner["headers"])


def error_message(response) -> str:
    return response.json()["error"]["message"]


async def count_rows(services, table) -> int:
    async with services.db.engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table))


async def test_publish_base64_wrapped_lines(client, owner):
    encoded = base64.encodebytes((EXAMPLES / "math.wasm").read_bytes()).decode()

    response = await post_task(client, owner, encoded)

    assert "\n" in encoded.strip()
    assert response.status_code == 200, response.text


async def test_publish_base64_missing_padding(client, owner):
    encoded = module_base64("add.wasm")

    response = await post_task(client, owner, encoded.rstrip("="))

    assert encoded.endswith("=")
    assert response.status_code == 200, response.text


async def test_publish_base64_bad_character(client, owner):
    encoded = module_base64("add.wasm")

    response = await post_task(client, owner, encoded[:4] + "-" + encoded[5:])

    assert response.status_code == 400
    assert "'-'" in error_message(response)


async def test_publish_base64_concatenated_chunks(client, owner):
    # Two padded base64 strings joined together put "=" inside the text, which is invalid base64.
    first = base64.b64encode(ADD_WASM[:10]).decode()
    second = base64.b64encode(ADD_WASM[10:]).decode()

    response = await post_task(client, owner, first + second)

    assert "=" in first
    assert response.status_code == 400, response.text
    assert "base64" in error_message(response)


async def test_publish_rejects_non_wasm(client, owner):
    for data in (b"hello world, not wasm", b"\x00asm\x01\x00\x00\x00\xff\xff"):
        response = await post_task(client, owner, base64.b64encode(data).decode())

        assert response.status_code == 400, data
        assert error_message(response).startswith("not a WebAssembly module: "), data


async def test_publish_unknown_function(client, owner):
    response = await post_task(client, owner, module_base64("math.wasm"), func="nope")

    message = error_message(response)
    assert response.status_code == 400
    assert "'nope'" in message
    assert "add, depth, div, fail, fib" in message


async def test_publish_rejects_bad_i32_args(client, owner):
    cases = {
        "too few": [1],
        "too many": [1, 2, 3],
        "bool": [True, 1],
        "fraction": [1.5, 1],
        "2**32": [2**32, 1],
        "below -2**31": [-(2**31) - 1, 1],
        "string": ["1", 1],
    }
    for case, args in cases.items():
        response = await post_task(client, owner, args=args)

        assert response.status_code == 400, case
        assert "invalid arg" in error_message(response), case


async def test_publish_accepts_integer_edges(client, owner, worker):
    unsigned_max = await post_task(client, owner, args=[2**32 - 1, 0])
    signed_min = await post_task(client, owner, args=[-(2**31), 0])
    i64_string = await post_task(client, owner, module_base64("math.wasm"), func="mul64", args=["18446744073709551615", 1])

    assert unsigned_max.status_code == 200, unsigned_max.text
    assert signed_min.status_code == 200, signed_min.text
    assert i64_string.status_code == 200, i64_string.text
    claimed = [await claim(client, worker) for _ in range(3)]
    assert [task["args"] for task in claimed] == [[2**32 - 1, 0], [-(2**31), 0], ["18446744073709551615", 1]]


async def test_publish_rejects_foreign_import(client, owner):
    response = await post_task(client, owner, module_base64("bad_import.wasm"), func="run", args=[])

    assert response.status_code == 400
    assert "env.foo" in error_message(response)


async def test_publish_wasi_command_args(client, owner):
    strings = await post_task(client, owner, module_base64("echo.wasm"), func="_start", args=["hello", "wörld"])
    numbers = await post_task(client, owner, module_base64("echo.wasm"), func="_start", args=["hello", 5])

    assert strings.status_code == 200, strings.text
    assert numbers.status_code == 400
    assert "must be a string" in error_message(numbers)


async def test_publish_task_limits(client, owner):
    no_time = await post_task(client, owner, timeout_seconds=0)
    over_an_hour = await post_task(client, owner, timeout_seconds=3601)
    too_many_retries = await post_task(client, owner, max_retries=26)
    at_limits = await post_task(client, owner, timeout_seconds=3600, max_retries=25)

    assert no_time.status_code == 400
    assert "timeout_seconds=0" in error_message(no_time)
    assert "[1, 3600]" in error_message(no_time)
    assert over_an_hour.status_code == 400
    assert "[1, 3600]" in error_message(over_an_hour)
    assert too_many_retries.status_code == 400
    assert "max_retries=26" in error_message(too_many_retries)
    assert "[0, 25]" in error_message(too_many_retries)
    assert at_limits.status_code == 200, at_limits.text


async def test_publish_module_over_limit(make_client):
    client = await make_client(limits={"max_module_bytes": 1000})
    owner = await register_and_login(client, "publisher")
    big = with_custom_section(ADD_WASM, 2000)

    response = await post_task(client, owner, base64.b64encode(big).decode())

    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413
    assert "1000" in error_message(response)


async def test_publish_stores_module_once(client, owner, services):
    await post_task(client, owner, args=[1, 2])
    await post_task(client, owner, args=[3, 4])

    assert await count_rows(services, modules) == 1
    assert await count_rows(services, tasks) == 2


async def test_large_module_round_trip(client, owner, worker, services):
    wasm = with_custom_section(ADD_WASM, 120 * 1024)
    sha256 = hashlib.sha256(wasm).hexdigest()

    published = await post_task(client, owner, base64.b64encode(wasm).decode())
    task = await claim(client, worker)
    async with services.db.engine.connect() as connection:
        stored = await connection.scalar(select(modules.c.wasm).where(modules.c.sha256 == sha256))

    assert published.status_code == 200, published.text
    assert task["module_sha256"] == sha256
    assert base64.b64decode(task["wasm_module"]) == wasm
    assert bytes(stored) == wasm


async def test_result_over_limit_keeps_processing(make_client):
    client = await make_client(limits={"max_result_bytes": 100})
    owner = await register_and_login(client, "publisher")
    await post_task(client, owner)
    task = await claim(client, owner)

    response = await client.post(
        "/results", json={"task_id": task["id"], "result": "r" * 200, "lease_token": task["lease_token"]}, headers=owner["headers"]
    )

    assert response.status_code == 413
    assert "100 byte limit" in error_message(response)
    assert (await get_task(client, owner, task["id"]))["status"] == "processing"


async def test_publish_batch(client, owner):
    drafts = [{"wasm_module": module_base64("add.wasm"), "func": "add", "args": [i, 1]} for i in range(3)]

    response = await client.post("/tasks", json={"tasks": drafts}, headers=owner["headers"])

    task_ids = response.json()["data"]["task_ids"]
    assert response.status_code == 200
    assert len(task_ids) == 3
    assert len(set(task_ids)) == 3
    assert (await get_task(client, owner, task_ids[2]))["args"] == [2, 1]


async def test_publish_batch_all_or_nothing(client, owner, services):
    drafts = [{"wasm_module": module_base64("add.wasm"), "func": "add", "args": [i, 1]} for i in range(4)]
    drafts[2]["args"] = ["two", 1]

    response = await client.post("/tasks", json={"tasks": drafts}, headers=owner["headers"])

    assert response.status_code == 400
    assert error_message(response).startswith("tasks[2]: ")
    assert await count_rows(services, tasks) == 0
