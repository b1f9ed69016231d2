"""End-to-end: the CLI's account and task commands against a real server and worker."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, free_port, rainchanel_command, register_user, stop_process

from rainchanel.cli import main

DEV_START_TIMEOUT_SECONDS = 60.0


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("RAINCHANEL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("RAINCHANEL_SERVER", raising=False)
    monkeypatch.delenv("RAINCHANEL_TOKEN", raising=False)
    runner = CliRunner()
    return lambda *args, **kwargs: runner.invoke(main, list(args), **kwargs)


def test_cli_submit_wait_prints_result(server, worker_factory, cli):
    worker_factory(server)
    registered = cli("register", "--server", server.url, "--username", "carol", "--password", "pw-carol-1")
    assert registered.exit_code == 0, registered.stderr

    submitted = cli("submit", str(EXAMPLES / "math.wasm"), "add", "2", "3", "--wait")
    failed = cli("submit", str(EXAMPLES / "math.wasm"), "div", "1", "0", "--retries", "0", "--wait")

    assert submitted.exit_code == 0, submitted.stderr
    assert submitted.stdout == "5\n"
    assert failed.exit_code == 1
    assert failed.stderr.startswith("error: task ")
    assert "divide by zero" in failed.stderr


def test_cli_results_and_status(server, worker_factory, cli):
    worker_factory(server)
    cli("register", "--server", server.url, "--username", "dave", "--password", "pw-dave-12")

    submitted = cli("submit", str(EXAMPLES / "math.wasm"), "fib", "90")
    task_id = int(submitted.stdout)
    results = cli("results", "--wait", "--count", "1")
    status = cli("status", str(task_id))
    empty = cli("results")

    assert results.exit_code == 0, results.stderr
    result = json.loads(results.stdout)
    assert result["task_id"] == task_id
    assert result["result"] == 2880067194370816120
    assert json.loads(status.stdout)["status"] == "completed"
    assert empty.exit_code == 0
    assert empty.stdout == ""


def test_cli_login_wrong_password(server, cli):
    cli("register", "--server", server.url, "--username", "erin", "--password", "pw-erin-12")

    result = cli("login", "--server", server.url, "--username", "erin", "--password", "wrong-password")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


def test_cli_status_unknown_task(server, cli):
    cli("register", "--server", server.url, "--username", "frank", "--password", "pw-frank-1")

    result = cli("status", "999")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")


def test_cli_register_no_login_keeps_saved_login(server, cli):
    first = cli("register", "--server", server.url, "--username", "gina", "--password", "pw-gina-12")
    worker_account = cli("register", "--server", server.url, "--username", "gina-worker", "--password", "pw-worker-1", "--no-login")
    saved = json.loads((Path(os.environ["RAINCHANEL_CONFIG_DIR"]) / "config.json").read_text())

    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith(f"registered gina on {server.url}; the CLI now uses this account (token saved in ")
    assert worker_account.exit_code == 0, worker_account.stderr
    assert worker_account.stdout == f"registered gina-worker on {server.url}; the CLI still uses account gina on {server.url}\n"
    assert saved["username"] == "gina"


def test_cli_login_prints_account(server, cli):
    cli("register", "--server", server.url, "--username", "hank", "--password", "pw-hank-12", "--no-login")

    result = cli("login", "--server", server.url, "--username", "hank", "--password", "pw-hank-12")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"logged in as hank on {server.url}; the CLI now uses this account (token saved in ")


def test_cli_worker_wrong_password_message(server):
    username, _password = register_user(server, "worker")
    env = dict(os.environ, RAINCHANEL_SERVER=server.url, RAINCHANEL_USERNAME=username, RAINCHANEL_PASSWORD="wrong-password")

    finished = subprocess.run(rainchanel_command("worker"), env=env, capture_output=True, text=True, timeout=60)

    assert finished.returncode == 1
    last_line = finished.stderr.splitlines()[-1]
    assert last_line.startswith(f"error: worker cannot log in to {server.url} as {username!r}: invalid username or password; ")
    assert f"rainchanel register --no-login --server {server.url}" in last_line


def test_cli_worker_logs_each_retry(tmp_path, processes):
    server_url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "worker.log"
    env = dict(
        os.environ, RAINCHANEL_SERVER=server_url, RAINCHANEL_USERNAME="nobody", RAINCHANEL_PASSWORD="pw",
        LOG_FORMAT="json", LOG_LEVEL="info",
    )
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(rainchanel_command("worker"), env=env, stdout=log_file, stderr=subprocess.STDOUT)
    processes.append(worker)

    retries = []
    deadline = time.monotonic() + 30
    while len(retries) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        retries = [event for event in events if event["event"] == "request_retrying"]
    stop_process(worker)

    assert [event["attempt"] for event in retries[:4]] == [1, 2, 3, 4]
    assert all(event["action"] == "login" for event in retries)
    assert all(event["delay_seconds"] > 0 for event in retries)
    assert retries[3]["delay_seconds"] > retries[0]["delay_seconds"]


def test_cli_dev_banner_and_login_dev(tmp_path, cli, processes):
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    workdir = tmp_path / "dev"
    workdir.mkdir()
    output_path = tmp_path / "dev.out"
    with open(output_path, "wb") as output:
        dev = subprocess.Popen(
            rainchanel_command("dev", "--port", str(port), "--concurrency", "1"), cwd=workdir,
            stdout=output, stderr=subprocess.DEVNULL,
        )
    processes.append(dev)
    wait_for_text(output_path, "Press Ctrl-C to stop.", dev)
    banner = output_path.read_text()

    second = cli("dev", "--port", str(port))
    switched = cli("register", "--server", server_url, "--username", "ivan", "--password", "pw-ivan-12")
    back = cli("login", "--dev")
    submitted = cli("submit", "--wait", str(EXAMPLES / "math.wasm"), "add", "--", "-2", "3")
    dev.terminate()
    dev.wait(timeout=30)

    assert f"RainChanel is running on {server_url} with one worker; the CLI is logged in as dev." in banner
    assert " -m rainchanel.cli submit --wait " in banner
    assert " -m rainchanel.cli login --dev` logs the CLI back in as dev." in banner
    assert second.exit_code == 1
    assert second.stderr == f"error: 127.0.0.1:{port} is already in use; stop the other server or pick another port with --port\n"
    assert switched.exit_code == 0, switched.stderr
    assert back.exit_code == 0, back.stderr
    assert back.stdout.startswith(f"logged in as dev on {server_url}; the CLI now uses this account")
    assert submitted.exit_code == 0, submitted.stderr
    assert submitted.stdout == "1\n"


def wait_for_text(path: Path, text: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + DEV_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"rainchanel dev exited with {process.returncode}:\n{path.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"rainchanel dev printed no {text!r} within {DEV_START_TIMEOUT_SECONDS} s:\n{path.read_text()}")
