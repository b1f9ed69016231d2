"""CLI commands through click's CliRunner: argument typing, saved login and error output."""

import json
import socket
import stat
from pathlib import Path

import pytest
import wasmtime
from click.testing import CliRunner

from rainchanel.cli import main, type_arguments, write_private_json

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


def test_submit_unknown_function_lists_exports(logged_in):
    result = run("submit", str(MATH_WASM), "nope")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown function 'nope': the module does not export it; exported functions: ")
    assert "add" in result.stderr
    assert result.stderr.count("\n") == 1


def test_submit_rejects_non_integer_argument(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2", "x")

    assert result.exit_code == 1
    assert result.stderr == "error: invalid argument 1: 'x' is not an integer, and the parameter is i32\n"


def test_submit_rejects_wrong_argument_count(logged_in):
    result = run("submit", str(MATH_WASM), "add", "2")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


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
