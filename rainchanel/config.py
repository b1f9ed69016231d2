"""Settings: application.yaml overridden by environment variables.

The YAML sections and the environment variable names are the ones the
earlier Go server used, so an existing deployment keeps its configuration.
"""

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from rainchanel.errors import ConfigError

DEFAULT_CONFIG_FILE = "application.yaml"
DEFAULT_SQLITE_FILE = "rainchanel.db"

# The secret the earlier server shipped as its default; it is public, so a
# server configured with it would accept tokens anyone can forge.
PUBLISHED_PLACEHOLDER_SECRET = "your-secret-key-change-in-production"
MIN_JWT_SECRET_BYTES = 32

# Environment variable -> dotted settings key.
ENVIRONMENT_KEYS = {
    "SERVER_HOST": "server.host",
    "SERVER_PORT": "server.port",
    "SERVER_WORKERS": "server.workers",
    "DATABASE_URL": "database.url",
    "DB_HOST": "database.host",
    "DB_PORT": "database.port",
    "DB_USER": "database.user",
    "DB_PASSWORD": "database.password",
    "DB_NAME": "database.database",
    "DB_POOL_SIZE": "database.pool_size",
    "JWT_SECRET": "jwt.secret",
    "JWT_EXPIRES_SECONDS": "jwt.expires_seconds",
    "TASK_TIMEOUT_SECONDS": "task.timeout_seconds",
    "TASK_MAX_RETRIES": "task.max_retries",
    "STALE_CHECK_INTERVAL_SECONDS": "task.stale_check_interval_seconds",
    "TASK_RETRY_BACKOFF_SECONDS": "task.retry_backoff_seconds",
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "task.retry_backoff_max_seconds",
    "TASK_MAX_TIMEOUT_SECONDS": "task.max_timeout_seconds",
    "TASK_MAX_RETRIES_LIMIT": "task.max_retries_limit",
    "MAX_MODULE_BYTES": "limits.max_module_bytes",
    "MAX_RESULT_BYTES": "limits.max_result_bytes",
    "MAX_BODY_BYTES": "limits.max_body_bytes",
    "LOG_FORMAT": "log.format",
    "LOG_LEVEL": "log.level",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)


class DatabaseSettings(Section):
    url: str | None = None
    host: str | None = None
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: str = ""
    database: str = "rainchanel"
    pool_size: int = Field(default=10, ge=1, le=200)

    def sqlalchemy_url(self) -> str:
        """Return the async SQLAlchemy URL for the configured database."""
        if self.url:
            return to_async_url(self.url)
        if self.host:
            credentials = quote(self.user, safe="")
            if self.password:
                credentials += ":" + quote(self.password, safe="")
            return f"mysql+asyncmy://{credentials}@{self.host}:{self.port}/{self.database}"
        return "sqlite+aiosqlite:///" + str(Path.cwd() / DEFAULT_SQLITE_FILE)


class JwtSettings(Section):
    secret: str | None = None
    expires_seconds: int = Field(default=86400, ge=60, le=90 * 86400)
    leeway_seconds: int = Field(default=30, ge=0, le=300)

    @model_validator(mode="after")
    def _check_secret(self) -> "JwtSettings":
        if self.secret is None:
            return self
        if self.secret == PUBLISHED_PLACEHOLDER_SECRET:
            raise ValueError(
                "jwt.secret is the published placeholder of the earlier server; "
                "set JWT_SECRET to a random value of at least 32 bytes, "
                "for example the output of: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if len(self.secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"jwt.secret is {len(self.secret.encode())} bytes long but must be at least "
                f"{MIN_JWT_SECRET_BYTES}; set JWT_SECRET to a longer random value, or unset it "
                "to let the server generate one and keep it in the database"
            )
        return self


class TaskSettings(Section):
    timeout_seconds: int = Field(default=30, ge=1)
    max_retries: int = Field(default=3, ge=0)
    stale_check_interval_seconds: float = Field(default=10, gt=0, le=3600)
    retry_backoff_seconds: float = Field(default=1, ge=0)
    retry_backoff_max_seconds: float = Field(default=300, ge=0)
    # Bounds for the per-task values a publisher may ask for.
    min_timeout_seconds: int = Field(default=1, ge=1)
    max_timeout_seconds: int = Field(default=3600, ge=1)
    max_retries_limit: int = Field(default=25, ge=0, le=60)

    @model_validator(mode="after")
    def _check_bounds(self) -> "TaskSettings":
        if not self.min_timeout_seconds <= self.timeout_seconds <= self.max_timeout_seconds:
            raise ValueError(
                f"task.timeout_seconds={self.timeout_seconds} is outside "
                f"[{self.min_timeout_seconds}, {self.max_timeout_seconds}]"
            )
        if self.max_retries > self.max_retries_limit:
            raise ValueError(
                f"task.max_retries={self.max_retries} is over task.max_retries_limit={self.max_retries_limit}"
            )
        return self


class LimitSettings(Section):
    max_module_bytes: int = Field(default=8 * 1024 * 1024, ge=8)
    max_result_bytes: int = Field(default=1024 * 1024, ge=16)
    max_body_bytes: int = Field(default=12 * 1024 * 1024, ge=1024)
    max_error_bytes: int = Field(default=4096, ge=64)


class LogSettings(Section):
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class EnvironmentSource(PydanticBaseSettingsSource):
    """Maps the flat environment variable names onto the nested sections."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable, dotted_key in ENVIRONMENT_KEYS.items():
            value = os.environ.get(variable)
            if value is None or value == "":
                continue
            section, key = dotted_key.split(".")
            values.setdefault(section, {})[key] = value
        return values


class Settings(BaseSettings):
    """Every setting of the server, the worker and the CLI."""

    model_config = SettingsConfigDict(extra="forbid")

    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    jwt: JwtSettings = JwtSettings()
    task: TaskSettings = TaskSettings()
    limits: LimitSettings = LimitSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Precedence: explicit values, then the environment, then the YAML file
        # named by model_config["yaml_file"] (set per load by load_settings).
        return init_settings, EnvironmentSource(settings_cls), YamlConfigSettingsSource(settings_cls)


def to_async_url(url: str) -> str:
    """Map a user-facing database URL onto the async driver SQLAlchemy needs."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("mysql://", "mariadb://")):
        return "mysql+asyncmy://" + url.split("://", 1)[1]
    if url.startswith(("sqlite+aiosqlite://", "mysql+asyncmy://")):
        return url
    raise ConfigError(
        f"database.url {url.split('://', 1)[0]}://... is not supported; "
        "use sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from the YAML file and the environment.

    Raises ConfigError naming the offending key when a value is invalid.
    """
    path = _resolve_config_path(config_path)

    class LoadedSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    try:
        settings = LoadedSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, path)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc

    settings.database.sqlalchemy_url()  # reject an unsupported URL at start-up
    return settings


def _resolve_config_path(config_path: str | Path | None) -> Path | None:
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    default = Path.cwd() / DEFAULT_CONFIG_FILE
    return default if default.is_file() else None


def _describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {message}" if key else message)
    origin = f" (from {path} and the environment)" if path else " (from the environment)"
    return "invalid configuration" + origin + ": " + "; ".join(problems)
