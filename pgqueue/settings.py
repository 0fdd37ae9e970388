"""Settings: PGQUEUE_* environment variables over the config file over defaults."""

from __future__ import annotations

import functools
import json
import logging
import math
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

from pgqueue.dsn import mask_dsn, parse_dsn
from pgqueue.errors import ConfigurationError, closest, first_line

DEFAULT_CONFIG_PATH = Path("config/services.yaml")
CONFIG_SECTION = "task"  # the section of the config file that holds pgqueue's settings
ENV_PREFIX = "pgqueue_"  # matched without regard to case, as PGQUEUE_DSN or pgqueue_dsn
NESTED_DELIMITER = "__"  # PGQUEUE_RABBITMQ__HOST: the `host` key of the `rabbitmq` section

#: (key, value, rule): one problem; keys are dotted for nested sections, e.g. `rabbitmq.port`.
Problem = tuple[str, Any, str]
_S = TypeVar("_S", bound="_Section")


class Secret:
    """A password: shown as '**********' by repr and str, read with get_secret_value()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- parsing: each parser returns the value as its type or raises _Invalid -----------------
# The rules and their wording are pydantic's lax mode, which read these settings before.


class _Invalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems


def _fail(value: Any, words: str) -> NoReturn:
    raise _Invalid([("", value, words)])


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    _fail(value, "Input should be a valid string")


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _integer(value: Any) -> int:
    if isinstance(value, int):  # True is 1
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(value, "Input should be a finite number")
        if not value.is_integer():
            _fail(value, "Input should be a valid integer, got a number with a fractional part")
        return int(value)
    if isinstance(value, str):
        try:
            return int(re.sub(r"\.0*$", "", value.strip()))  # " 7 ", "1_000", "10.0"
        except ValueError:
            pass
        _fail(value, "Input should be a valid integer, unable to parse string as an integer")
    _fail(value, "Input should be a valid integer")


def _number(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        _fail(value, "Input should be a valid number, unable to parse string as a number")
    _fail(value, "Input should be a valid number")


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, str | int | float):
        _fail(value, "Input should be a valid boolean, unable to interpret input")
    _fail(value, "Input should be a valid boolean")


def _one_of(*options: str) -> Callable[[Any], str]:
    wording = ", ".join(repr(option) for option in options[:-1]) + f" or {options[-1]!r}"

    def parse(value: Any) -> str:
        if isinstance(value, str) and value in options:
            return value
        _fail(value, f"Input should be {wording}")

    return parse


def _dsn(value: Any) -> str | None:
    """A DSN libpq can parse, checked here so that no pool or message ever gets a bad one;
    InvalidDsn (its own message, the DSN masked) rather than a problem that quotes it."""
    dsn = _optional_text(value)
    if dsn is not None:
        parse_dsn(dsn)
    return dsn


def _names(value: Any) -> list[str]:
    """A list of strings, or one string of comma-separated names."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list | tuple):
        _fail(value, "Input should be a valid list")
    not_text = [(str(i), item) for i, item in enumerate(value) if not isinstance(item, str)]
    if not_text:
        raise _Invalid([(i, item, "Input should be a valid string") for i, item in not_text])
    return list(value)


def _secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if hasattr(value, "get_secret_value"):  # pydantic's SecretStr, from a caller
        value = value.get_secret_value()
    return Secret(_text(value))


def _section(cls: type[_S]) -> Callable[[Any], _S]:
    def parse(value: Any) -> _S:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            _fail(value, f"Input should be a valid dictionary or instance of {cls.__name__}")
        values, problems = _parse(cls, value)
        if problems:
            raise _Invalid(problems)
        return cls(**values)

    return parse


_BOUNDS = {
    "gt": (operator.gt, "greater than"),
    "ge": (operator.ge, "greater than or equal to"),
    "le": (operator.le, "less than or equal to"),
}


def rule(parse: Callable[[Any], Any], **checks: Any) -> dict[str, Any]:
    """A field's metadata: the parser of its type, and its checks: gt/ge/le bounds, a regex
    `pattern`."""
    return {"parse": parse, **checks}


def _check(spec: Field[Any], raw: Any) -> Any:
    value = spec.metadata["parse"](raw)
    for bound, (holds, words) in _BOUNDS.items():
        if bound in spec.metadata and not holds(value, spec.metadata[bound]):
            _fail(raw, f"Input should be {words} {spec.metadata[bound]}")
    pattern = spec.metadata.get("pattern")
    if pattern and not re.search(pattern, value):
        _fail(raw, f"String should match pattern '{pattern}'")
    return value


def _parse(cls: type[_Section], data: Mapping[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The values of `data` as `cls`'s field types, and every problem: field order first,
    then keys `cls` does not have."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for spec in fields(cls):
        if spec.name in data:
            try:
                values[spec.name] = _check(spec, data[spec.name])
            except _Invalid as invalid:
                problems += [
                    (f"{spec.name}.{key}" if key else spec.name, value, words)
                    for key, value, words in invalid.problems
                ]
    known = cls.field_names()
    for key, value in data.items():
        if key not in known:
            close = closest(str(key), known)
            hint = f", did you mean {close!r}?" if close else ""
            problems.append((str(key), value, "not a setting" + hint))
    return values, problems


def _describe(problems: list[Problem]) -> str:
    return "invalid settings: " + "; ".join(
        f"{key}={_shown(key, value)!r}: {words}" for key, value, words in problems
    )


def _shown(key: str, value: Any) -> Any:
    """A refused value as the message may quote it: a password never (YAML reads
    `password: 12345` as a number, refused as not a string), a URL's masked."""
    if "password" in key.rsplit(".", 1)[-1]:
        return "****"
    return mask_dsn(value) if isinstance(value, str) else value


class _Section:
    """Validates on construction (also by dataclasses.replace): a bad value is a
    ConfigurationError; strings of numbers, booleans, ... become their types."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in self.field_names()}
        values, problems = _parse(type(self), given)
        if problems:
            raise ConfigurationError(_describe(problems))
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: only here

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values; sections as dicts and the password in clear (mask it to show)."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}


def _plain(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, Secret):
        return value.get_secret_value()
    return list(value) if isinstance(value, list) else value


# -- the settings ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskDefaults(_Section):
    """Options a task gets when neither its decorator nor its call sets them."""

    queue: str = field(default="default", metadata=rule(_text))
    priority: int = field(default=0, metadata=rule(_integer, ge=-32768, le=32767))
    max_retries: int = field(default=3, metadata=rule(_integer, ge=0))


@dataclass(frozen=True, slots=True)
class RabbitMQSettings(_Section):
    """The seed's `task.rabbitmq` section."""

    host: str = field(default="localhost", metadata=rule(_text))
    port: int = field(default=5672, metadata=rule(_integer, ge=1, le=65535))
    username: str = field(default="guest", metadata=rule(_text))
    password: Secret = field(default_factory=lambda: Secret("guest"), metadata=rule(_secret))
    vhost: str = field(default="/", metadata=rule(_text))


@dataclass(frozen=True, slots=True)
class Settings(_Section):
    """Every setting; `task:` of config/services.yaml uses the same names. Built directly it
    holds what it is given; load_settings() reads the environment and the file.

    >>> Settings(dsn="postgresql://app@db/app").lease_seconds
    30.0
    """

    #: Sections: PGQUEUE_<NAME>__<KEY> sets one key, PGQUEUE_<NAME> a JSON object.
    SECTIONS: ClassVar[tuple[str, ...]] = ("rabbitmq", "defaults")

    dsn: str | None = field(default=None, metadata=rule(_dsn))
    # Where LISTEN connections go when `dsn` is a pooler in transaction mode (PgBouncer):
    # a direct connection to the server. Unset: `dsn`, or polling if LISTEN fails there.
    listen_dsn: str | None = field(default=None, metadata=rule(_dsn))
    broker: Literal["database", "rabbitmq"] = field(
        default="database", metadata=rule(_one_of("database", "rabbitmq"))
    )
    rabbitmq_url: str | None = field(default=None, metadata=rule(_optional_text))
    rabbitmq: RabbitMQSettings = field(
        default_factory=RabbitMQSettings, metadata=rule(_section(RabbitMQSettings))
    )
    # Names of everything pgqueue declares on RabbitMQ start with this (queues, exchanges).
    rabbitmq_prefix: str = field(
        default="pgqueue", metadata=rule(_text, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
    )
    defaults: TaskDefaults = field(
        default_factory=TaskDefaults, metadata=rule(_section(TaskDefaults))
    )
    imports: list[str] = field(default_factory=list, metadata=rule(_names))
    lease_seconds: float = field(default=30.0, metadata=rule(_number, gt=0))
    shutdown_grace_seconds: float = field(default=30.0, metadata=rule(_number, ge=0))
    max_payload_bytes: int = field(default=1_048_576, metadata=rule(_integer, gt=0))
    # How long a task may be given back by workers that have not registered its name before
    # it ends FAILED (0: at the first such claim).
    unknown_task_grace_seconds: float = field(default=3600.0, metadata=rule(_number, ge=0))
    schema_name: str = field(
        default="pgqueue", metadata=rule(_text, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    )
    data_dir: str = field(default=".pgqueue", metadata=rule(_text))
    status_tracking: bool = field(default=True, metadata=rule(_boolean))
    # A task that fails for good (no retry left) is logged at ERROR with its traceback.
    log_failure_tracebacks: bool = field(default=True, metadata=rule(_boolean))

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


#: The sections of Settings, by name: their keys are checked in the config file too.
_SECTION_TYPES: dict[str, type[_Section]] = {"rabbitmq": RabbitMQSettings, "defaults": TaskDefaults}


# -- the sources -------------------------------------------------------------------------


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
    import yaml  # only when a config file is used: the worker does without it

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        # One line: where the parser stopped and why, not its multi-line excerpt.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or first_line(error)
        raise ConfigurationError(f"{path} is not valid YAML{where}: {problem}") from error
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path} must hold a mapping with a 'task:' section")
    if CONFIG_SECTION not in document:
        _check_no_section(path, document)
    section = document.get(CONFIG_SECTION) or {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"{path}: 'task' must be a mapping, not {section!r}")
    unknown = list(_unknown_keys(Settings, section))
    if len(unknown) == 1:
        key, hint = unknown[0]
        raise ConfigurationError(f"unknown setting {key!r} in {path}: {hint}")
    if unknown:
        listed = ", ".join(f"{key!r} ({hint})" for key, hint in unknown)
        raise ConfigurationError(f"unknown settings in {path}: {listed}")
    return section


def _check_no_section(path: Path, document: Mapping[Any, Any]) -> None:
    """A file without a `task:` section: a misspelt one, or settings at the top level, is
    refused; a file of other services only is used without pgqueue settings, with a warning.
    (Other top-level sections beside `task:` are other services' and left alone.)"""
    keys = [str(key) for key in document]
    misspelt = [key for key in keys if closest(key, [CONFIG_SECTION], cutoff=0.8)]
    if misspelt:
        raise ConfigurationError(
            f"unknown section {misspelt[0]!r} in {path}: did you mean {CONFIG_SECTION!r}? "
            "(pgqueue reads its settings from the 'task:' section)"
        )
    settings = [key for key in keys if key in Settings.field_names()]
    if settings:
        raise ConfigurationError(
            f"{', '.join(repr(key) for key in settings)} in {path} must be inside the 'task:' "
            "section: indent the settings under a line `task:`"
        )
    if path.resolve() not in _warned_files:  # once per process: settings are read often
        _warned_files.add(path.resolve())
        logging.getLogger("pgqueue.settings").warning(
            "%s has no 'task:' section (it has %s): pgqueue uses its defaults and PGQUEUE_* "
            "variables",
            path,
            ", ".join(repr(key) for key in keys) or "nothing",
        )


_warned_files: set[Path] = set()


def _unknown_keys(
    cls: type[_Section], data: Mapping[Any, Any], prefix: str = ""
) -> Iterator[tuple[str, str]]:
    """(dotted key, hint) for each key of `data`, and of its sections, that `cls` lacks."""
    known = cls.field_names()
    for key, value in data.items():
        name = str(key)
        if name in _SECTION_TYPES and not prefix and isinstance(value, Mapping):
            yield from _unknown_keys(_SECTION_TYPES[name], value, f"{name}.")
        elif name not in known:
            close = closest(name, known)
            yield (
                prefix + name,
                f"did you mean {prefix + close!r}?" if close else f"not one of {', '.join(known)}",
            )


def read_environment() -> dict[str, Any]:
    """The PGQUEUE_<FIELD> variables, as strings; a section from PGQUEUE_<SECTION> (a JSON
    object) and PGQUEUE_<SECTION>__<KEY> (one key each, over the JSON). Other PGQUEUE_*
    variables (PGQUEUE_CONFIG, ...) are not settings: ignored, with a warning when the
    name is close to a setting's."""
    names = Settings.field_names()
    found: dict[str, Any] = {}
    keys: dict[str, dict[str, str]] = {}
    for variable, value in os.environ.items():
        name = variable.lower()
        if not name.startswith(ENV_PREFIX):
            continue
        name = name.removeprefix(ENV_PREFIX)
        section, _, key = name.partition(NESTED_DELIMITER)
        if key and section in Settings.SECTIONS:
            keys.setdefault(section, {})[key] = value
        elif name in Settings.SECTIONS:
            try:
                found[name] = json.loads(value)
            except ValueError:
                found[name] = value  # refused by the section's rule, naming the value
        elif name in names:
            found[name] = value
        else:
            _warn_if_misspelt(variable, name, names)
    for section, values in keys.items():
        whole = found.get(section, {})  # not a JSON object: kept, to be refused by its rule
        found[section] = {**whole, **values} if isinstance(whole, dict) else whole
    return found


#: PGQUEUE_* variables of pgqueue's that are not settings (read by the command line).
OTHER_VARIABLES = ("config", "log_level", "log_format")


def _warn_if_misspelt(variable: str, name: str, names: tuple[str, ...]) -> None:
    """A PGQUEUE_* variable close to a setting's name is most likely a typo, silently
    ignored otherwise: warned of, not refused, since others may be the user's own
    (PGQUEUE_TEST_DSN: a setting's name with words of its own around it is left alone)."""
    if name in OTHER_VARIABLES or any(
        name.endswith("_" + setting) or name.startswith(setting + "_")
        for setting in names
        if setting not in Settings.SECTIONS
    ):
        return
    nested = [
        f"{section}{NESTED_DELIMITER}{key}"
        for section, cls in _SECTION_TYPES.items()
        for key in cls.field_names()
    ]
    close = closest(name, [*names, *nested])
    if close:
        logging.getLogger("pgqueue.settings").warning(
            "%s is not a pgqueue setting and is ignored; did you mean %s?",
            variable,
            (ENV_PREFIX + close).upper(),
        )


def _merge(*sources: Mapping[str, Any]) -> dict[str, Any]:
    """Later sources win; a section given as a mapping by several is merged key by key."""
    merged: dict[str, Any] = {}
    for source in sources:
        for key, value in source.items():
            below = merged.get(key)
            if isinstance(below, Mapping) and isinstance(value, Mapping):
                value = _merge(below, value)
            merged[key] = value
    return merged


def load_settings(**overrides: Any) -> Settings:
    """Settings from all sources, highest first: `overrides`, the environment, the config
    file, the defaults. Bad values are one error naming each key, value and rule."""
    path = config_path()
    merged = _merge(read_config_file(path) if path else {}, read_environment(), overrides)
    values, problems = _parse(Settings, merged)
    if problems:
        raise ConfigurationError(_describe(problems))
    return Settings(**values)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
