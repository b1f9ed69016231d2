"""The `rainchanel` command line: server, migrations, worker and client commands."""

import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx

from rainchanel import __version__
from rainchanel.client import (
    DEFAULT_SERVER_URL, MAX_FETCH_BATCH, MAX_WAIT_SECONDS, ApiError, RainChanelClient, server_url_problem,
)
from rainchanel.config import load_settings
from rainchanel.errors import RainChanelError


class CliError(click.ClickException):
    """An error printed as one line on stderr with exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group()
@click.version_option(__version__, prog_name="rainchanel")
def main() -> None:
    """RainChanel: a distributed task queue that runs WebAssembly modules."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Path of application.yaml (default: ./application.yaml if present).")
@click.option("--host", help="Interface to listen on (default: server.host, 0.0.0.0).")
@click.option("--port", type=int, help="TCP port to listen on (default: server.port, 8080).")
@click.option("--workers", type=int, help="Number of server processes sharing the port (default: server.workers, 1).")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Apply migrations and run the HTTP server."""
    from rainchanel.server.runner import run_server

    settings = _load(config_path)
    if host:
        settings.server.host = host
    if port:
        settings.server.port = port
    if workers:
        settings.server.workers = workers
    _run(run_server, settings)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Path of application.yaml (default: ./application.yaml if present).")
def migrate(config_path: str | None) -> None:
    """Apply the database migrations and exit."""
    from rainchanel.store.migrate import upgrade_database

    settings = _load(config_path)
    _run(upgrade_database, settings.database.sqlalchemy_url())
    click.echo("database schema is up to date")


# Client-side state

CONFIG_FILE = "config.json"
DEV_STATE_FILE = "dev.json"

# Delays between polls while waiting for a task or a result.
POLL_INITIAL_SECONDS = 0.05
POLL_MAX_SECONDS = 1.0

# Seconds the server may hold one GET /results of `results --wait`.
RESULTS_WAIT_SECONDS = 20.0

# Minimum seconds between two progress lines when stderr is not a terminal.
PROGRESS_LINE_INTERVAL_SECONDS = 2.0


def check_server_url(context: click.Context, parameter: click.Parameter, value: str | None) -> str | None:
    """Reject a --server value that no request could use, such as one without http://."""
    if value is None:
        return None
    problem = server_url_problem(value)
    if problem is not None:
        raise CliError(f"invalid --server {value!r}: {problem}, as in {DEFAULT_SERVER_URL}")
    return value


server_option = click.option(
    "--server", envvar="RAINCHANEL_SERVER", default=DEFAULT_SERVER_URL, show_default=True, metavar="URL",
    callback=check_server_url, help="Base URL of the RainChanel server [env: RAINCHANEL_SERVER].",
)

# For commands that use the saved login: its server is the default.
logged_in_server_option = click.option(
    "--server", envvar="RAINCHANEL_SERVER", metavar="URL", callback=check_server_url,
    help="Base URL of the RainChanel server (default: the server of the saved login) [env: RAINCHANEL_SERVER].",
)


def config_dir() -> Path:
    """Return the directory of the CLI's saved login: $RAINCHANEL_CONFIG_DIR or the user config directory."""
    return Path(os.environ.get("RAINCHANEL_CONFIG_DIR") or click.get_app_dir("rainchanel"))


def read_private_json(name: str) -> dict[str, Any]:
    """Return the object stored in the config directory file `name`, or {} when it does not exist."""
    path = config_dir() / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}; fix the file, or move it away and log in again") from exc


def write_private_json(name: str, data: dict[str, Any]) -> Path:
    """Write `data` to the config directory file `name`, readable by the user only (mode 0600)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
    os.chmod(path, 0o600)  # the mode of os.open applies to new files only
    return path


def save_login(server: str, login: dict[str, Any]) -> Path:
    return write_private_json(CONFIG_FILE, {
        "server": server,
        "token": login["token"],
        "username": login.get("username"),
        "expires_at": login.get("expires_at"),
    })


def logged_in_client(server: str | None) -> RainChanelClient:
    """Return a client for `server` (default: the saved one) with the saved token, or $RAINCHANEL_TOKEN.

    Raises CliError when there is no token, or when the saved token belongs to
    a server other than `server`, because that server would reject it and
    should not see it.
    """
    saved = read_private_json(CONFIG_FILE)
    saved_server = saved.get("server") or DEFAULT_SERVER_URL
    server = server or saved_server
    token = os.environ.get("RAINCHANEL_TOKEN")
    if token:
        return RainChanelClient(server, token=token)

    token = saved.get("token")
    if not token:
        raise CliError("not logged in; run: rainchanel login")
    if server.rstrip("/") != saved_server.rstrip("/"):
        raise CliError(f"the saved login is for {saved_server}, not {server}; run: rainchanel login --server {server}")
    return RainChanelClient(server, token=token)


def describe_saved_login() -> str:
    """Return "account NAME on URL" for the CLI's saved login, or "no account" when there is none."""
    saved = read_private_json(CONFIG_FILE)
    if not saved.get("token"):
        return "no account"
    return f"account {saved.get('username') or '(unknown name)'} on {saved.get('server') or DEFAULT_SERVER_URL}"


def api_error(exc: ApiError) -> CliError:
    """Turn an ApiError into a one-line CLI error with the next step when there is one."""
    if exc.status == 401 and exc.path not in ("/login", "/register"):
        return CliError(f"{exc.message}; log in again with: rainchanel login")
    if exc.status is None and isinstance(exc.__cause__, httpx.ConnectError):
        return CliError(
            f"{exc.message}; is the server running? Start one with `rainchanel dev` or `rainchanel serve`, "
            "or give the URL of a running one with --server"
        )
    return CliError(exc.message)


# Accounts

@main.command()
@server_option
@click.option("--username", envvar="RAINCHANEL_USERNAME", prompt=True, help="Account name; prompted for when missing [env: RAINCHANEL_USERNAME].")
@click.option(
    "--password", envvar="RAINCHANEL_PASSWORD", prompt=True, hide_input=True, confirmation_prompt=True,
    help="Account password; prompted for when missing [env: RAINCHANEL_PASSWORD].",
)
@click.option(
    "--no-login", is_flag=True,
    help="Only create the account and keep the CLI's saved login, for example for a worker account.",
)
def register(server: str, username: str, password: str, no_login: bool) -> None:
    """Create an account on the server and log the CLI in to it.

    The CLI then uses the new account for submit, status and results, unless
    --no-login is given.
    """
    with RainChanelClient(server) as client:
        try:
            client.register(username, password)
            login_data = None if no_login else client.login(username, password)
        except ApiError as exc:
            raise api_error(exc) from exc
    if login_data is None:
        click.echo(f"registered {username} on {server}; the CLI still uses {describe_saved_login()}")
        return
    path = save_login(server, login_data)
    click.echo(f"registered {username} on {server}; the CLI now uses this account (token saved in {path})")


@main.command()
@click.option(
    "--server", envvar="RAINCHANEL_SERVER", metavar="URL", callback=check_server_url,
    help=f"Base URL of the RainChanel server (default: {DEFAULT_SERVER_URL}, or with --dev the server "
    "that `rainchanel dev` last started) [env: RAINCHANEL_SERVER].",
)
@click.option("--username", envvar="RAINCHANEL_USERNAME", help="Account name; prompted for when missing [env: RAINCHANEL_USERNAME].")
@click.option("--password", envvar="RAINCHANEL_PASSWORD", help="Account password; prompted for when missing [env: RAINCHANEL_PASSWORD].")
@click.option(
    "--dev", "dev_account", is_flag=True,
    help="Log in as the CLI account of `rainchanel dev`, whose random password is kept in dev.json in the config directory.",
)
def login(server: str | None, username: str | None, password: str | None, dev_account: bool) -> None:
    """Log in and save the server URL and token for the other commands.

    The saved login replaces the previous one: submit, status and results
    then use this account.
    """
    if dev_account:
        server, username, password = dev_login_details(server)
    else:
        server = server or DEFAULT_SERVER_URL
        username = username or click.prompt("Username")
        password = password or click.prompt("Password", hide_input=True)

    with RainChanelClient(server) as client:
        try:
            login_data = client.login(username, password)
        except ApiError as exc:
            raise api_error(exc) from exc
    path = save_login(server, login_data)
    click.echo(f"logged in as {username} on {server}; the CLI now uses this account (token saved in {path})")


def dev_login_details(server: str | None) -> tuple[str, str, str]:
    """Return the server URL, username and password of the CLI account that `rainchanel dev` created.

    `server` overrides the URL saved by the last `rainchanel dev`.
    """
    context = click.get_current_context()
    for name in ("username", "password"):
        if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--dev and --{name} cannot be used together: --dev logs in as the account in dev.json")
    state = read_private_json(DEV_STATE_FILE)
    if not state.get("cli_username") or not state.get("cli_password"):
        raise CliError(f"no `rainchanel dev` account found in {config_dir() / DEV_STATE_FILE}; start one with: rainchanel dev")
    return server or state.get("server_url") or DEFAULT_SERVER_URL, state["cli_username"], state["cli_password"]


# Tasks

@main.command()
@click.argument("module_path", metavar="MODULE.wasm", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("func")
@click.argument("args", nargs=-1)
@click.option(
    "--stdin", "stdin_file", type=click.File("r"), metavar="FILENAME",
    help="File whose text is the program's standard input (WASI); - reads this command's standard input.",
)
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Environment variable for the program (WASI); repeatable.")
@click.option("--timeout", "timeout_seconds", type=click.IntRange(min=1), help="Seconds one attempt may run (default: the server's).")
@click.option("--retries", "max_retries", type=click.IntRange(min=0), help="Retries after a failed attempt (default: the server's).")
@click.option(
    "--wait", is_flag=True,
    help="Wait until the task finishes and print its result as JSON. This reads the task's status and "
    "does not deliver the result, so `rainchanel results` prints it too.",
)
@logged_in_server_option
def submit(
    module_path: Path, func: str, args: tuple[str, ...], stdin_file, env_pairs: tuple[str, ...],
    timeout_seconds: int | None, max_retries: int | None, wait: bool, server: str | None,
) -> None:
    """Publish a task that calls FUNC of MODULE.wasm.

    Prints the task id, or with --wait the task's result.

    ARGS are converted to the types of FUNC's parameters, read from the
    module: "7" for an i32 is 7, "1.5" for an f64 is 1.5. For a WASI
    command's _start, ARGS are the program's argv strings.

    Every word after -- is an argument, even one that starts with a dash, so
    negative numbers need --, and options must come before it:

    \b
        rainchanel submit --wait examples/math.wasm add -- -2 3
    """
    module = module_path.read_bytes()
    typed_args = type_arguments(module, func, args)
    env = parse_env(env_pairs)
    stdin = stdin_file.read() if stdin_file is not None else None

    with logged_in_client(server) as client:
        try:
            module_ref = upload_module(client, module)
            task_id = client.publish(
                None if module_ref else module, func, typed_args, module_ref=module_ref,
                timeout_seconds=timeout_seconds, max_retries=max_retries, stdin=stdin, env=env,
            )
            if not wait:
                click.echo(task_id)
                return
            task = wait_for_task(client, task_id)
        except ApiError as exc:
            raise api_error(exc) from exc

    if task["status"] == "failed":
        attempts = plural(task.get("attempts") or 0, "attempt")
        raise CliError(f"task {task_id} failed after {attempts}: {task.get('last_error')}")
    click.echo(json.dumps(task.get("result")))


def upload_module(client: RainChanelClient, module: bytes) -> str | None:
    """Upload the module once and return its reference, or None when the server has no /modules route.

    A server without the route answers 404 or 405; the task then carries the module inline.
    """
    try:
        return client.upload_module(module)
    except ApiError as exc:
        if exc.status in (404, 405):
            return None
        raise


def type_arguments(module: bytes, func: str, args: tuple[str, ...]) -> list[Any]:
    """Convert command-line strings to the JSON values FUNC's signature takes.

    Raises CliError for an invalid module, an unknown function or an argument
    that does not fit its parameter type.
    """
    from rainchanel.wasm.inspect import WASI_COMMAND_ENTRY, check_call, inspect_module, new_validation_engine

    try:
        info = inspect_module(new_validation_engine(), module)
        signature = info.functions.get(func)
        if signature is None or (func == WASI_COMMAND_ENTRY and info.is_wasi):
            return check_call(info, func, list(args))
        check_argument_count(func, signature.params, args)
        typed = [parse_wasm_value(index, wasm_type, text) for index, (wasm_type, text) in enumerate(zip(signature.params, args))]
        typed.extend(args[len(signature.params):])
        return check_call(info, func, typed)
    except RainChanelError as exc:
        raise CliError(exc.message) from exc


def check_argument_count(func: str, params: tuple[str, ...] | list[str], args: tuple[str, ...]) -> None:
    """Raise CliError naming the missing parameters or the extra values when the counts differ."""
    if len(args) == len(params):
        return
    expected = f"function {func!r} takes {plural(len(params), 'argument')} ({', '.join(params) or 'none'}) but got {len(args)}"
    if len(args) < len(params):
        missing = [f"{index} ({wasm_type})" for index, wasm_type in enumerate(params) if index >= len(args)]
        noun = "argument" if len(missing) == 1 else "arguments"
        raise CliError(f"{expected}; missing {noun} {', '.join(missing)}")

    extra = args[len(params):]
    noun = "value" if len(extra) == 1 else "values"
    message = f"{expected}; extra {noun}: {' '.join(shlex.quote(value) for value in extra)}"
    if any(value.startswith("-") for value in extra):
        message += "; every word after -- is an argument, so put options such as --wait before MODULE.wasm"
    raise CliError(message)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def parse_wasm_value(index: int, wasm_type: str, text: str) -> Any:
    """Parse one command-line argument as a value of a wasm numeric type."""
    if wasm_type in ("i32", "i64"):
        try:
            return int(text, 10)
        except ValueError:
            raise CliError(f"invalid argument {index}: {text!r} is not an integer, and the parameter is {wasm_type}") from None
    if wasm_type in ("f32", "f64"):
        if text.lower() in ("nan", "inf", "-inf"):
            return text.lower()
        try:
            return float(text)
        except ValueError:
            raise CliError(f"invalid argument {index}: {text!r} is not a number, and the parameter is {wasm_type}") from None
    # Parameter types without a JSON form are rejected by check_call.
    return text


def parse_env(pairs: tuple[str, ...]) -> dict[str, str] | None:
    env = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise CliError(f"invalid --env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env or None


def wait_for_task(client: RainChanelClient, task_id: int) -> dict[str, Any]:
    """Poll the task until it is completed or failed and return its final state."""
    delay = POLL_INITIAL_SECONDS
    while True:
        task = client.get_task(task_id)
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_SECONDS)


@main.command()
@click.argument("task_id", type=int)
@logged_in_server_option
def status(task_id: int, server: str | None) -> None:
    """Print the state of one of your tasks as JSON.

    TASK_ID is the number that `rainchanel submit` printed.
    """
    with logged_in_client(server) as client:
        try:
            task = client.get_task(task_id)
        except ApiError as exc:
            raise api_error(exc) from exc
    click.echo(json.dumps(task))


@main.command()
@click.option("--wait", is_flag=True, help="Wait until --count results (default: 1) have been delivered.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many results.")
@logged_in_server_option
def results(wait: bool, count: int | None, server: str | None) -> None:
    """Print your undelivered results as JSON lines, oldest first.

    The server delivers each result once, so a result that this command
    printed is not printed by a later call. `submit --wait` only reads the
    task's status and does not deliver the result, so this command prints
    that result as well. Without --wait, the command exits when no
    undelivered result is left.
    """
    if wait and count is None:
        count = 1
    progress = Progress(count) if wait and count > 1 else None
    delivered = 0
    delay = POLL_INITIAL_SECONDS
    wait_seconds = RESULTS_WAIT_SECONDS if wait else 0
    with logged_in_client(server) as client:
        while count is None or delivered < count:
            batch_size = MAX_FETCH_BATCH if count is None else min(MAX_FETCH_BATCH, count - delivered)
            requested_at = time.monotonic()
            try:
                batch = client.next_results(batch_size, wait=wait_seconds)
            except ApiError as exc:
                raise api_error(exc) from exc
            if not batch:
                if not wait:
                    break
                # An empty answer well before the wait is over means the server
                # does not hold requests, so poll with backoff instead.
                if time.monotonic() - requested_at < wait_seconds / 2:
                    time.sleep(delay)
                    delay = min(delay * 2, POLL_MAX_SECONDS)
                continue
            delay = POLL_INITIAL_SECONDS
            for result in batch:
                delivered += 1
                click.echo(json.dumps(result))
                if progress:
                    progress.update(delivered)
    if progress:
        progress.finish()


class Progress:
    """Progress of a wait on stderr: one updated line on a terminal, else a line every few seconds."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.is_terminal = sys.stderr.isatty()
        self.last_line_at = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.is_terminal:
            click.echo(f"\r{done}/{self.total} results delivered", err=True, nl=False)
        elif now - self.last_line_at >= PROGRESS_LINE_INTERVAL_SECONDS or done == self.total:
            click.echo(f"{done}/{self.total} results delivered", err=True)
            self.last_line_at = now

    def finish(self) -> None:
        if self.is_terminal:
            click.echo("", err=True)


# Worker

@main.command()
@server_option
@click.option("--username", envvar="RAINCHANEL_USERNAME", required=True, help="Worker account name [env: RAINCHANEL_USERNAME].")
@click.option("--password", envvar="RAINCHANEL_PASSWORD", required=True, help="Worker account password [env: RAINCHANEL_PASSWORD].")
@click.option(
    "--concurrency", envvar="RAINCHANEL_CONCURRENCY", type=click.IntRange(min=1, max=1024), default=os.cpu_count() or 1,
    show_default="number of CPUs", help="Tasks run in parallel [env: RAINCHANEL_CONCURRENCY].",
)
@click.option("--memory-limit-mib", type=click.IntRange(min=1, max=4095), default=256, show_default=True, help="Maximum linear memory of one task, in MiB.")
@click.option("--fuel", type=click.IntRange(min=1), help="Maximum wasm instructions (fuel units) of one task; no limit by default.")
@click.option("--grace-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Seconds running tasks may take to finish after SIGTERM or SIGINT.")
@click.option(
    "--claim-wait-seconds", type=click.FloatRange(min=0.1, max=MAX_WAIT_SECONDS), default=5.0, show_default=True,
    help="Seconds the server may hold a claim while no task is available (long polling); "
    "an idle worker takes up to this long to stop.",
)
@click.option(
    "--prefetch", type=click.IntRange(min=0, max=1000), default=None, show_default="about 0.1 s of work per slot, at most 128 per slot",
    help="Claimed tasks kept waiting for a free slot beyond the running ones; 0 claims only for free slots. "
    "Without it, the size follows the average run time; fix it when short and long tasks mix.",
)
@click.option(
    "--legacy-routes", is_flag=True,
    help="Use only the original single-task routes: one task per claim with the module inline, "
    "one outcome per report, polling with backoff. For servers without long polling and batches.",
)
def worker(
    server: str, username: str, password: str, concurrency: int, memory_limit_mib: int, fuel: int | None,
    grace_seconds: float, claim_wait_seconds: float, prefetch: int | None, legacy_routes: bool,
) -> None:
    """Claim tasks from the server and run them until stopped.

    The worker stops on SIGTERM or SIGINT. By default the worker long-polls for batches of tasks, downloads each
    module once by its SHA-256 and reports outcomes in batches. A server that cannot be reached is retried with
    backoff until it responds or the worker is stopped; rejected credentials end the worker at once.

    Logs go to stderr; LOG_FORMAT (console or json) and LOG_LEVEL (debug,
    info, warning, error) select their format and level.
    """
    from rainchanel.logs import configure_logging
    from rainchanel.worker import Worker, WorkerSettings

    try:
        configure_logging(os.environ.get("LOG_FORMAT") or "console", os.environ.get("LOG_LEVEL") or "info")
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    settings = WorkerSettings(
        server_url=server, username=username, password=password, concurrency=concurrency,
        memory_limit_mib=memory_limit_mib, fuel=fuel, grace_seconds=grace_seconds,
        claim_wait_seconds=claim_wait_seconds, legacy_routes=legacy_routes,
    )
    if prefetch is not None:
        settings.prefetch = prefetch
    try:
        Worker(settings).run()
    except ApiError as exc:
        if exc.status == 401:
            raise CliError(
                f"worker cannot log in to {server} as {username!r}: {exc.message}; check --username and --password "
                f"(RAINCHANEL_USERNAME, RAINCHANEL_PASSWORD), or create the account with: "
                f"rainchanel register --no-login --server {server}"
            ) from exc
        raise CliError(f"worker cannot start on {server} as {username!r}: {exc.message}") from exc


# Local development

DEV_HOST = "127.0.0.1"


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="TCP port of the local server.")
@click.option("--concurrency", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default="number of CPUs", help="Tasks the local worker runs in parallel.")
def dev(port: int, concurrency: int) -> None:
    """Run a local server and worker, and log the CLI in to them.

    The server keeps its SQLite database in the current directory and listens
    on 127.0.0.1 only. The worker and CLI accounts, their random passwords and
    the JWT secret (unless JWT_SECRET is set) are kept in dev.json in the
    config directory. After `login` or `register` as another account,
    `rainchanel login --dev` logs the CLI back in to the dev account.
    Ctrl-C stops the worker, then the server.
    """
    check_port_free(DEV_HOST, port)
    server_url = f"http://{DEV_HOST}:{port}"
    state = load_dev_state(server_url)
    env = dict(os.environ, JWT_SECRET=os.environ.get("JWT_SECRET") or state["jwt_secret"])
    env.pop("RAINCHANEL_PASSWORD", None)

    processes: list[subprocess.Popen] = []
    try:
        server_process = start_child(["serve", "--host", DEV_HOST, "--port", str(port)], env)
        processes.append(server_process)
        wait_for_server(server_url, server_process)
        ensure_account(server_url, state["worker_username"], state["worker_password"])
        ensure_account(server_url, state["cli_username"], state["cli_password"])
        with RainChanelClient(server_url) as client:
            save_login(server_url, client.login(state["cli_username"], state["cli_password"]))

        worker_env = dict(
            env, RAINCHANEL_SERVER=server_url, RAINCHANEL_USERNAME=state["worker_username"],
            RAINCHANEL_PASSWORD=state["worker_password"],
        )
        processes.insert(0, start_child(["worker", "--concurrency", str(concurrency)], worker_env))
        print_dev_banner(server_url, state["cli_username"])
        wait_for_exit(processes)
    except ApiError as exc:
        raise api_error(exc) from exc
    finally:
        stop_children(processes)


def check_port_free(host: str, port: int) -> None:
    """Raise CliError when host:port cannot be bound, for example because another server listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The server sets SO_REUSEADDR as well, so a port held only by closed
        # connections in TIME_WAIT counts as free, as it does for the server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"{host}:{port} is already in use; stop the other server or pick another port with --port") from exc
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another port with --port") from exc


def print_dev_banner(server_url: str, cli_username: str) -> None:
    command = invoked_command()
    click.echo(f"RainChanel is running on {server_url} with one worker; the CLI is logged in as {cli_username}.")
    click.echo(f"Try: {command} submit --wait {example_module()} add 2 3")
    click.echo(f"After logging in as another account, `{command} login --dev` logs the CLI back in as {cli_username}.")
    click.echo("Press Ctrl-C to stop.")


def invoked_command() -> str:
    """Return the shell command that runs this CLI as it was started.

    That is "rainchanel" when PATH finds this very script, else the script's
    path as typed (for example .venv/bin/rainchanel), or "python -m
    rainchanel.cli" with the running interpreter.
    """
    script = sys.argv[0]
    if script.endswith(".py"):
        return f"{shlex.quote(sys.executable)} -m rainchanel.cli"
    on_path = shutil.which("rainchanel")
    if on_path and Path(on_path).resolve() == Path(script).resolve():
        return "rainchanel"
    return shlex.quote(script)


def example_module() -> str:
    """Return a path to examples/math.wasm that works from the current directory, or MODULE.wasm."""
    relative = Path("examples") / "math.wasm"
    if relative.is_file():
        return str(relative)
    # An editable install or a source checkout keeps examples/ next to the package.
    in_checkout = Path(__file__).resolve().parent.parent / relative
    if in_checkout.is_file():
        return shlex.quote(str(in_checkout))
    return "MODULE.wasm"


def load_dev_state(server_url: str) -> dict[str, str]:
    """Return the local accounts and JWT secret of `rainchanel dev`, creating and saving them once.

    `server_url` is saved too, so `rainchanel login --dev` finds the server.
    """
    state = read_private_json(DEV_STATE_FILE)
    defaults = {
        "jwt_secret": lambda: secrets.token_urlsafe(48),
        "worker_username": lambda: "dev-worker",
        "worker_password": lambda: secrets.token_urlsafe(24),
        "cli_username": lambda: "dev",
        "cli_password": lambda: secrets.token_urlsafe(24),
    }
    missing = [key for key in defaults if not state.get(key)]
    for key in missing:
        state[key] = defaults[key]()
    if missing or state.get("server_url") != server_url:
        state["server_url"] = server_url
        write_private_json(DEV_STATE_FILE, state)
    return state


def start_child(arguments: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A new session keeps the terminal's Ctrl-C away from the child, so this
    # process alone decides the order in which they stop.
    return subprocess.Popen([sys.executable, "-m", "rainchanel.cli", *arguments], env=env, start_new_session=True)


def wait_for_server(server_url: str, process: subprocess.Popen, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    with RainChanelClient(server_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CliError(f"the server exited with status {process.returncode} during start-up; see its log above")
            try:
                client.ping()
                return
            except ApiError:
                time.sleep(0.2)
    raise CliError(f"the server did not respond on {server_url} within {timeout_seconds:.0f} seconds")


def ensure_account(server_url: str, username: str, password: str) -> None:
    """Register the account, or check that the existing one takes this password."""
    with RainChanelClient(server_url) as client:
        try:
            client.register(username, password)
        except ApiError as exc:
            if exc.status != 409:
                raise
        try:
            client.login(username, password)
        except ApiError as exc:
            if exc.status == 401:
                raise CliError(
                    f"account {username!r} on {server_url} has a password other than the one in "
                    f"{config_dir() / DEV_STATE_FILE}, so the server's database was set up with another "
                    "config directory. Run `rainchanel dev` with that directory as RAINCHANEL_CONFIG_DIR, "
                    "or run it in another working directory to get a new database"
                ) from exc
            raise


def wait_for_exit(processes: list[subprocess.Popen]) -> None:
    """Block until Ctrl-C or SIGTERM, or until a child exits on its own (then raise CliError)."""
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop_requested:
            for process in processes:
                if process.poll() is not None:
                    name = "worker" if "worker" in process.args else "server"
                    raise CliError(f"the {name} exited with status {process.returncode}; stopping")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_children(processes: list[subprocess.Popen], timeout_seconds: float = 15.0) -> None:
    """Send SIGTERM to each child in order and wait for it; kill one that does not exit in time.

    A second Ctrl-C while waiting kills every child still running, so
    none is left behind.
    """
    try:
        for process in processes:
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    except KeyboardInterrupt:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _load(config_path: str | None):
    try:
        return load_settings(config_path)
    except RainChanelError as exc:
        raise CliError(exc.message) from exc


def _run(function, *args):
    try:
        return function(*args)
    except RainChanelError as exc:
        raise CliError(exc.message) from exc


if __name__ == "__main__":
    sys.exit(main())
