"""End-to-end: the CLI's account and task commands against a real server and worker."""

import json

import pytest
from click.testing import CliRunner
from conftest import EXAMPLES

from rainchanel.cli import main


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
