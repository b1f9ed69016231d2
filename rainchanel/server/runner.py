"""Start-up: logging, migrations, then uvicorn."""

import uvicorn

from rainchanel.config import Settings
from rainchanel.logs import configure_logging
from rainchanel.server.app import create_app
from rainchanel.store.migrate import upgrade_database


def run_server(settings: Settings) -> None:
    """Apply migrations and serve until interrupted."""
    configure_logging(settings.log.format, settings.log.level)
    upgrade_database(settings.database.sqlalchemy_url())
    app = create_app(settings, migrate=False)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log=False,
        log_config=None,
        server_header=False,
    )
