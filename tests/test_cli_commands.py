"""CLI commands through click's CliRunner: argument typing, saved login and error output."""

import json
import socket
import stat
from pathlib import Path

import pytest
import wasmtime
from click.testing import CliRunner

from rainchanel.cli import invoked_command, main, type_arguments, write_private_json

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MATH_WASM = EXAMPLES / "math.wasm"
ECHO_WASM = EXAMPLES / "echo.wasm"

FLOAT_MODULE = wasmtime.wat2wasm(
    """(module
      (func (export "scale") (param f64 f32) (result f64)
        local.get 0
        local.get 1
        f64.promote_f32
        f64.mul))"""
)


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    directory = tmp_path / "config"
    monkeypatch.setenv("RAINCHANEL_CONFIG_DIR", str(directory))
    monkeypatch.delenv("RAINCHANEL_SERVER", raising=False)
    monkeypatch.delenv("RAINCHANEL_TOKEN", raising=False)
    return directory


@pytest.fixture
def logged_in(config_dir):
    """A saved login for a server on a closed port."""
    write_private_json("config.json", {"server": f"http://127.0.0.1:{closed_port()}", "token": "t"})
    return config_dir


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_type_arguments_follows_signature():
    assert type_arguments(MATH_WASM.read_bytes(), "add", ("7", "-2")) == [7, -2]
    assert type_arguments(MATH_WASM.read_bytes(), "mul64", ("9007199254740993", "3")) == [9007199254740993, 3]
    assert type_arguments(FLOAT_MODULE, "scale", ("1.5", "2")) == [1.5, 2.0]
    assert type_arguments(FLOAT_MODULE, "scale", ("inf", "NaN")) == ["inf", "nan"]


def test_type_arguments_keeps_argv_strings_for_start():
    assert type_arguments(ECHO_WASM.read_bytes(), "_start", ("3", "x y")) == ["3", "x y"]


def test_submit_without_login_fails(config_dir):
    result = run("submit", str(MATH_WASM), "add", "2", "3")

    assert result.exit_code == 1
    assert result.stderr == "error: not logged in; run: rainchanel login\n"


@pytest.mark.parametrize(
    ("command", "url", "problem"),
    [
        (["worker", "--username", "w", "--password", "p"], "localhost:8080", "it must start with http:// or https://"),
        (["login", "--username", "u", "--password", "p"], "127.0.0.1:8080", "it must start with http:// or https://"),
        (["results"], "http://", "it names no host"),
    ],
)
def test_server_url_without_scheme_rejected(config_dir, command, url, problem):
    result = run(command[0], "--server", url, *command[1:])

    assert result.exit_code == 1
    assert result.stderr == f"error: invalid --server {url!r}: {problem}, as in http://127.0.0.1:8080\n"


def test_submit_unknown_function_lists_exports(logged_in):
    result = run("submit", str(MATH_WASM), "nope")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown function 'nope': the module exports no function of that name; exported functions: ")
    assert "add" in result.stderr
    assert result.stderr.count("\n") == 1


def test_submit_rejects_non_integer_argument(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2", "x")

    assert result.exit_code == 1
    assert result.stderr == "error: invalid argument 1: 'x' is not an integer, and the parameter is i32\n"


def test_submit_rejects_wrong_argument_count(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2")

    assert result.exit_code == 1
    assert result.stderr == "error: function 'add' takes 2 arguments (i32, i32) but got 1; missing argument 1 (i32)\n"


def test_submit_extra_arguments_are_named(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2", "3", "4", "x y")

    assert result.exit_code == 1
    assert result.stderr == "error: function 'add' takes 2 arguments (i32, i32) but got 4; extra values: 4 'x y'\n"


def test_submit_option_after_dashes_explained(logged_in):
    result = run("submit", str(MATH_WASM), "add", "--", "-2", "3", "--wait")

    assert result.exit_code == 1
    assert result.stderr == (
        "error: function 'add' takes 2 arguments (i32, i32) but got 3; extra value: --wait; "
        "every word after -- is an argument, so put options such as --wait before MODULE.wasm\n"
    )


def test_submit_help_negative_number_example():
    # The form that `submit --help` shows: options, then -- before the arguments.
    assert type_arguments(MATH_WASM.read_bytes(), "add", ("-2", "3")) == [-2, 3]
    result = run("submit", "--help")
    assert "rainchanel submit --wait examples/math.wasm add -- -2 3" in result.stdout


def test_submit_rejects_out_of_range_i32(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2", str(2**40))

    assert result.exit_code == 1
    assert str(2**40) in result.stderr


def test_submit_rejects_invalid_env(logged_in):
    result = run("submit", str(ECHO_WASM), "_start", "--env", "NOEQUALS")

    assert result.exit_code == 1
    assert result.stderr == "error: invalid --env 'NOEQUALS': expected KEY=VALUE\n"


def test_submit_rejects_non_wasm_file(logged_in, tmp_path):
    path = tmp_path / "notes.wasm"
    path.write_text("hello")

    result = run("submit", str(path), "add")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: not a WebAssembly module")


def test_submit_unreachable_server_fails(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2", "3")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach http://127.0.0.1:")
    assert result.stderr.count("\n") == 1
    assert "is the server running? Start one with `rainchanel dev` or `rainchanel serve`" in result.stderr


def test_submit_server_option_needs_matching_login(logged_in, monkeypatch):
    other = f"http://127.0.0.1:{closed_port()}"

    by_option = run("submit", "--server", other, str(MATH_WASM), "add", "2", "3")
    monkeypatch.setenv("RAINCHANEL_SERVER", other)
    by_env = run("status", "1")

    assert by_option.exit_code == 1
    assert by_option.stderr.startswith("error: the saved login is for http://127.0.0.1:")
    assert by_option.stderr.endswith(f", not {other}; run: rainchanel login --server {other}\n")
    assert by_env.stderr == by_option.stderr


def test_token_env_allows_any_server(logged_in, monkeypatch):
    monkeypatch.setenv("RAINCHANEL_TOKEN", "t2")
    port = closed_port()

    result = run("results", "--server", f"http://127.0.0.1:{port}")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}")


def test_client_commands_document_server_option():
    for command in ("submit", "status", "results", "login", "register", "worker"):
        result = run(command, "--help")

        assert "--server URL" in result.stdout, command
        assert "RAINCHANEL_SERVER" in result.stdout, command


def test_login_unreachable_server_fails(config_dir):
    port = closed_port()

    result = run("login", "--server", f"http://127.0.0.1:{port}", "--username", "ann", "--password", "pw")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}")
    assert not (config_dir / "config.json").exists()


def test_private_json_is_user_only(config_dir):
    path = write_private_json("config.json", {"token": "t"})

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"token": "t"}


def test_worker_requires_credentials(monkeypatch):
    monkeypatch.delenv("RAINCHANEL_USERNAME", raising=False)
    monkeypatch.delenv("RAINCHANEL_PASSWORD", raising=False)

    result = run("worker")

    assert result.exit_code == 2
    assert "Missing option '--username'" in result.stderr


def test_command_list_shows_whole_summaries():
    result = run("--help")

    commands = result.stdout.split("Commands:\n", 1)[1]
    assert result.exit_code == 0
    assert "..." not in commands
    assert "submit    Publish a task that calls FUNC of MODULE.wasm." in result.stdout


def test_help_texts_name_real_options():
    results_help = run("results", "--help").stdout
    submit_help = run("submit", "--help").stdout
    status_help = run("status", "--help").stdout

    assert "COUNT" not in results_help
    assert "Wait until --count results (default: 1)" in results_help
    assert "does not deliver the result" in " ".join(results_help.split())
    assert "- reads this command's standard input" in " ".join(submit_help.split())
    assert "TASK_ID is the number that `rainchanel submit` printed." in status_help


def test_register_help_offers_no_login():
    result = run("register", "--help")

    assert "--no-login" in result.stdout


def test_dev_port_in_use_fails(config_dir):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        result = run("dev", "--port", str(port))

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: 127.0.0.1:{port} is already in use; stop the other server or pick another port with --port\n"
    )
    assert not (config_dir / "dev.json").exists()


def test_login_dev_without_dev_state_fails(config_dir):
    result = run("login", "--dev")

    assert result.exit_code == 1
    assert result.stderr == f"error: no `rainchanel dev` account found in {config_dir / 'dev.json'}; start one with: rainchanel dev\n"


def test_login_dev_rejects_username(config_dir):
    result = run("login", "--dev", "--username", "ann")

    assert result.exit_code == 2
    assert "--dev and --username cannot be used together" in result.stderr


def test_invoked_command_follows_argv(monkeypatch, tmp_path):
    script = tmp_path / "bin" / "rainchanel"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("sys.argv", [str(script)])
    assert invoked_command() == str(script)

    monkeypatch.setenv("PATH", str(script.parent))
    assert invoked_command() == "rainchanel"

    monkeypatch.setattr("sys.argv", ["/src/rainchanel/cli.py"])
    assert invoked_command().endswith(" -m rainchanel.cli")
