"""Settings come from application.yaml and the earlier server's environment names."""

import pytest

from rainchanel.config import PUBLISHED_PLACEHOLDER_SECRET, load_settings
from rainchanel.errors import ConfigError

LEGACY_VARIABLES = [
    "SERVER_PORT", "DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME", "DATABASE_URL", "JWT_SECRET",
    "TASK_TIMEOUT_SECONDS", "TASK_MAX_RETRIES", "STALE_CHECK_INTERVAL_SECONDS", "LOG_FORMAT",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in LEGACY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_config_defaults_use_sqlite_in_working_directory(tmp_path):
    settings = load_settings()

    assert settings.server.port == 8080
    assert settings.database.sqlalchemy_url() == f"sqlite+aiosqlite:///{tmp_path / 'rainchanel.db'}"
    assert settings.jwt.secret is None


def test_config_yaml_sections_of_earlier_server(tmp_path):
    (tmp_path / "application.yaml").write_text(
        "server:\n  port: 9000\n"
        "database:\n  host: db.internal\n  port: 3307\n  user: queue\n  password: p@ss\n  database: rain\n"
        "task:\n  timeout_seconds: 60\n  max_retries: 5\n  stale_check_interval_seconds: 15\n"
    )

    settings = load_settings()

    assert settings.server.port == 9000
    assert settings.database.sqlalchemy_url() == "mysql+asyncmy://queue:p%40ss@db.internal:3307/rain"
    assert settings.task.timeout_seconds == 60
    assert settings.task.max_retries == 5
    assert settings.task.stale_check_interval_seconds == 15


def test_config_environment_overrides_yaml(tmp_path, monkeypatch):
    (tmp_path / "custom.yaml").write_text("server:\n  port: 9000\n")
    monkeypatch.setenv("SERVER_PORT", "9100")
    monkeypatch.setenv("TASK_MAX_RETRIES", "7")
    monkeypatch.setenv("DATABASE_URL", "mysql://u:pw@127.0.0.1:3306/queue")

    settings = load_settings(tmp_path / "custom.yaml")

    assert settings.server.port == 9100
    assert settings.task.max_retries == 7
    assert settings.database.sqlalchemy_url() == "mysql+asyncmy://u:pw@127.0.0.1:3306/queue"


def test_config_sqlite_url_maps_to_async_driver(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:////var/lib/rain/queue.db")

    assert load_settings().database.sqlalchemy_url() == "sqlite+aiosqlite:////var/lib/rain/queue.db"


def test_config_rejects_published_placeholder_secret(monkeypatch):
    monkeypatch.setenv("JWT_SECRET", PUBLISHED_PLACEHOLDER_SECRET)

    with pytest.raises(ConfigError, match="published placeholder"):
        load_settings()


def test_config_rejects_short_secret(monkeypatch):
    monkeypatch.setenv("JWT_SECRET", "x" * 31)

    with pytest.raises(ConfigError, match="at least 32"):
        load_settings()


def test_config_bad_value_names_key(monkeypatch):
    monkeypatch.setenv("SERVER_PORT", "eighty")

    with pytest.raises(ConfigError, match=r"server\.port"):
        load_settings()


def test_config_unknown_yaml_key_named(tmp_path):
    (tmp_path / "application.yaml").write_text("task:\n  timeout_secs: 5\n")

    with pytest.raises(ConfigError, match=r"task\.timeout_secs"):
        load_settings()


def test_config_invalid_yaml_rejected(tmp_path):
    (tmp_path / "application.yaml").write_text("server: [unclosed\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()


def test_config_missing_explicit_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


def test_config_unsupported_url_scheme_rejected(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/queue")

    with pytest.raises(ConfigError, match="not supported"):
        load_settings()


def test_config_default_timeout_outside_limits_rejected(monkeypatch):
    monkeypatch.setenv("TASK_TIMEOUT_SECONDS", "4000")

    with pytest.raises(ConfigError, match="timeout_seconds"):
        load_settings()
