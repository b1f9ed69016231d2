"""Sampling profiles of the server with py-spy, summarised by function.

py-spy's raw output has one line per distinct stack, "frame;frame;... count",
with the outermost frame first and each frame written "function (file:line)".
"""

import contextlib
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from processes import start_child

SAMPLE_RATE_HZ = 200
STOP_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def record(output_dir: Path | None, name: str, pid: int):
    """Record the process pid and its children with py-spy while the block runs; no-op without output_dir."""
    if output_dir is None:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [
        str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", str(SAMPLE_RATE_HZ),
        "--format", "raw", "--output", str(output_dir / f"{name}.txt"),
    ]
    process = start_child(command, None, output_dir / f"{name}.py-spy.log")
    try:
        yield
    finally:
        # py-spy writes its output when interrupted, as after Ctrl-C.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def summarise(raw_path: Path, top: int = 15) -> str:
    """Return the functions with the largest self and inclusive shares of the samples in raw_path."""
    if not raw_path.exists():
        return f"{raw_path}: no profile written; see {raw_path.with_suffix('.py-spy.log')}"
    self_counts: Counter[str] = Counter()
    inclusive_counts: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function_name(frame) for frame in stack.split(";")]
        total += count
        self_counts[frames[-1]] += count
        for function in set(frames):
            inclusive_counts[function] += count
    if total == 0:
        return f"{raw_path}: no samples"
    lines = [f"{raw_path.name}: {total} samples", "  self time:"]
    lines += [f"    {count / total:6.1%}  {function}" for function, count in self_counts.most_common(top)]
    lines.append("  inclusive time (rainchanel, sqlalchemy, asyncmy, aiosqlite, starlette, fastapi, pydantic frames):")
    interesting = ("rainchanel", "sqlalchemy", "asyncmy", "aiosqlite", "starlette", "fastapi", "pydantic", "structlog", "uvicorn")
    ranked = [(function, count) for function, count in inclusive_counts.most_common() if any(word in function for word in interesting)]
    lines += [f"    {count / total:6.1%}  {function}" for function, count in ranked[:top]]
    return "\n".join(lines)


def _function_name(frame: str) -> str:
    """Turn "function (path/to/package/module.py:123)" into "function (package/module.py)"."""
    function, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    for marker in ("site-packages", "lib", "main"):
        if marker in parts:
            parts = parts[len(parts) - parts[::-1].index(marker) :]
            break
    return f"{function} ({'/'.join(parts[-3:])})"
