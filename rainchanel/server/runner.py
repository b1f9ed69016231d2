"""Start-up: logging, migrations, then uvicorn with one or several processes."""

import logging
import os
import shutil
import tempfile
from pathlib import Path

import structlog
import uvicorn

from rainchanel.config import Settings
from rainchanel.logs import configure_logging
from rainchanel.server.services import WAKEUP_FILE_VARIABLE, WAKEUP_SLOTS
from rainchanel.server.waiting import SharedCounters
from rainchanel.store.migrate import upgrade_database

# The parent hands its resolved settings to each server process through
# this variable, so every process runs with exactly the same values.
SETTINGS_VARIABLE = "RAINCHANEL_SERVER_SETTINGS"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

log = structlog.get_logger("rainchanel.server")


def run_server(settings: Settings) -> None:
    """Apply migrations and serve until interrupted."""
    configure_logging(settings.log.format, settings.log.level)
    # Migrate once here, before any server process starts.
    upgrade_database(settings.database.sqlalchemy_url())
    common = {
        "host": settings.server.host,
        "port": settings.server.port,
        "access_log": False,
        "log_config": None,
        "server_header": False,
    }
    if settings.server.workers == 1:
        from rainchanel.server.app import create_app

        uvicorn.run(create_app(settings, migrate=False), **common)
        return

    metrics_dir = _fresh_metrics_directory()
    os.environ[SETTINGS_VARIABLE] = settings.model_dump_json()
    wakeup_file = metrics_dir / "wakeup.bin"
    SharedCounters.create(wakeup_file, WAKEUP_SLOTS)
    os.environ[WAKEUP_FILE_VARIABLE] = str(wakeup_file)
    log.info("server_processes_starting", processes=settings.server.workers, metrics_dir=str(metrics_dir))
    try:
        uvicorn.run(
            "rainchanel.server.runner:create_process_app",
            factory=True,
            workers=settings.server.workers,
            **common,
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def create_process_app():
    """Build the application inside one of several server processes."""
    from rainchanel.server.app import create_app
    from rainchanel.server.metrics import Metrics

    settings = Settings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    configure_logging(settings.log.format, settings.log.level)
    # Requests are logged by RequestLogMiddleware; uvicorn's own access
    # lines would repeat each one.
    logging.getLogger("uvicorn.access").propagate = False
    return create_app(settings, migrate=False, metrics=Metrics(multiprocess=True))


def _fresh_metrics_directory() -> Path:
    """Return an empty directory for prometheus_client's multiprocess files.

    Files left by an earlier run would add its counts to this one's, so an
    existing directory named by PROMETHEUS_MULTIPROC_DIR is emptied.
    """
    configured = os.environ.get(MULTIPROCESS_VARIABLE)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.db"):
            leftover.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="rainchanel-metrics-"))
        os.environ[MULTIPROCESS_VARIABLE] = str(directory)
    return directory
