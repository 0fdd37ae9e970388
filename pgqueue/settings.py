"""Settings: PGQUEUE_* environment variables over the config file over defaults."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pgqueue.errors import ConfigurationError

DEFAULT_CONFIG_PATH = Path("config/services.yaml")


class TaskDefaults(BaseModel):
    """Options a task gets when neither its decorator nor its call sets them."""

    model_config = ConfigDict(extra="forbid")
    queue: str = "default"
    priority: int = Field(default=0, ge=-32768, le=32767)
    max_retries: int = Field(default=3, ge=0)


class RabbitMQSettings(BaseModel):
    """The seed's `task.rabbitmq` section."""

    model_config = ConfigDict(extra="forbid")
    host: str = "localhost"
    port: int = Field(default=5672, ge=1, le=65535)
    username: str = "guest"
    password: SecretStr = SecretStr("guest")
    vhost: str = "/"


class Settings(BaseSettings):
    """Every setting; `task:` of config/services.yaml uses the same names.

    >>> Settings(dsn="postgresql://app@db/app").lease_seconds
    30.0
    """

    model_config = SettingsConfigDict(
        env_prefix="PGQUEUE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    dsn: str | None = None
    broker: Literal["database", "rabbitmq"] = "database"
    rabbitmq_url: str | None = None
    rabbitmq: RabbitMQSettings = Field(default_factory=RabbitMQSettings)
    # Names of everything pgqueue declares on RabbitMQ start with this (queues, exchanges).
    rabbitmq_prefix: str = Field("pgqueue", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
    defaults: TaskDefaults = Field(default_factory=TaskDefaults)
    imports: Annotated[list[str], NoDecode] = []
    lease_seconds: float = Field(30.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    max_payload_bytes: int = Field(1_048_576, gt=0)
    schema_name: str = Field("pgqueue", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    data_dir: str = ".pgqueue"
    status_tracking: bool = True

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, ConfigFileSource(settings_cls))

    def rabbitmq_connection_url(self) -> str:
        """`PGQUEUE_RABBITMQ_URL`, else an amqp:// URL built from the `rabbitmq` section."""
        if self.rabbitmq_url:
            return self.rabbitmq_url
        from urllib.parse import quote

        section = self.rabbitmq
        return (
            f"amqp://{quote(section.username, safe='')}:"
            f"{quote(section.password.get_secret_value(), safe='')}@{section.host}:{section.port}/"
            f"{quote(section.vhost, safe='')}"
        )


def config_path() -> Path | None:
    """The YAML file in use: PGQUEUE_CONFIG, else config/services.yaml if it exists."""
    named = os.environ.get("PGQUEUE_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigurationError(f"PGQUEUE_CONFIG names {named!r}, which is not a file")
        return path
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The `task:` section of a services.yaml file."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        # One line: where the parser stopped and why, not its multi-line excerpt.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[0]
        raise ConfigurationError(f"{path} is not valid YAML{where}: {problem}") from error
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path} must hold a mapping with a 'task:' section")
    section = document.get("task") or {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"{path}: 'task' must be a mapping, not {section!r}")
    return section


class ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the `task:` section of the YAML config file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_path()
        return read_config_file(path) if path else {}


def load_settings(**overrides: Any) -> Settings:
    """Settings from all sources; a bad value is one error naming key, value and rule."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            value = item.get("input")
            problems.append(f"{key}={value!r}: {item['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
