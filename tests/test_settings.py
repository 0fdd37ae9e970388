"""Settings: PGQUEUE_* environment over the config file (seed layout, `task:` section) over
defaults; PGQUEUE_CONFIG; unknown keys and bad values refused naming key, value and rule."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.paths import ROOT

from pgqueue.errors import ConfigurationError, PgQueueError
from pgqueue.settings import Settings, get_settings, load_settings

SEED_CONFIG = """\
# config/services.yaml, as the seed documents it
task:
  broker: database
  defaults:
    queue: mail
    priority: 4
    max_retries: 6
  rabbitmq:
    host: rabbit.local
    port: 5673
    username: app
    password: "p@ss/word"
    vhost: /prod
other_service:
  anything: goes
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No PGQUEUE_* variable from the outside, and a working folder without config/."""
    for name in list(os.environ):
        if name.startswith("PGQUEUE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def write_config(folder: Path, text: str, name: str = "config/services.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_config_or_environment() -> None:
    settings = load_settings()
    assert settings.dsn is None and settings.broker == "database"
    assert (settings.defaults.queue, settings.defaults.priority) == ("default", 0)
    assert settings.defaults.max_retries == 3
    assert settings.lease_seconds == 30.0 and settings.shutdown_grace_seconds == 30.0
    assert settings.max_payload_bytes == 1_048_576 and settings.imports == []
    assert settings.schema_name == "pgqueue"


def test_seed_config_file_in_the_working_folder(tmp_path: Path) -> None:
    write_config(tmp_path, SEED_CONFIG)
    settings = load_settings()
    assert (settings.defaults.queue, settings.defaults.priority) == ("mail", 4)
    assert settings.defaults.max_retries == 6
    assert settings.rabbitmq.host == "rabbit.local" and settings.rabbitmq.port == 5673
    assert (
        settings.rabbitmq_connection_url() == "amqp://app:p%40ss%2Fword@rabbit.local:5673/%2Fprod"
    )
    assert "p@ss" not in repr(settings)


def test_environment_over_config_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path,
        "task:\n  dsn: postgresql://file@db/app\n  lease_seconds: 20\n"
        "  defaults: {queue: from-file, priority: 2}\n",
    )
    monkeypatch.setenv("PGQUEUE_LEASE_SECONDS", "10")
    monkeypatch.setenv("PGQUEUE_DEFAULTS__QUEUE", "from-env")
    monkeypatch.setenv("PGQUEUE_IMPORTS", "myapp.tasks, other.tasks,,")
    monkeypatch.setenv("PGQUEUE_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("PGQUEUE_RABBITMQ_URL", "amqp://u:p@h:1/v")
    settings = load_settings()
    assert settings.lease_seconds == 10.0  # environment
    assert settings.dsn == "postgresql://file@db/app"  # file
    assert settings.defaults.queue == "from-env"  # environment, nested
    assert settings.defaults.priority == 2  # file, nested, kept beside the env value
    assert settings.defaults.max_retries == 3  # default
    assert settings.imports == ["myapp.tasks", "other.tasks"]
    assert settings.max_payload_bytes == 2048
    assert settings.rabbitmq_connection_url() == "amqp://u:p@h:1/v"
    # Arguments given in code win over everything.
    assert load_settings(lease_seconds=5).lease_seconds == 5.0


def test_pgqueue_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, "task:\n  defaults: {queue: ignored}\n")
    named = write_config(tmp_path, "task:\n  broker: rabbitmq\n", name="elsewhere/pgq.yaml")
    monkeypatch.setenv("PGQUEUE_CONFIG", str(named))
    settings = load_settings()
    assert settings.broker == "rabbitmq" and settings.defaults.queue == "default"

    monkeypatch.setenv("PGQUEUE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(
        ConfigurationError, match=r"PGQUEUE_CONFIG names '.*missing\.yaml'.*not a file"
    ):
        load_settings()


def test_get_settings_reads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://one@h/db")
    assert get_settings().dsn == "postgresql://one@h/db"
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://two@h/db")
    assert get_settings().dsn == "postgresql://one@h/db"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("task:\n  broker: redis\n", r"broker='redis': Input should be 'database' or 'rabbitmq'"),
        ("task:\n  lease_seconds: 0\n", r"lease_seconds=0: Input should be greater than 0"),
        (
            "task:\n  defaults: {priority: 99999}\n",
            r"defaults\.priority=99999: .*less than or equal to 32767",
        ),
        (
            "task:\n  defaults: {max_retries: -1}\n",
            r"defaults\.max_retries=-1: .*greater than or equal to 0",
        ),
        (
            "task:\n  rabbitmq: {port: 70000}\n",
            r"rabbitmq\.port=70000: .*less than or equal to 65535",
        ),
        (
            "task:\n  schema_name: 'Bad-Name'\n",
            r"schema_name='Bad-Name': String should match pattern",
        ),
        (
            "task:\n  max_payload_bytes: lots\n",
            r"max_payload_bytes='lots': Input should be a valid integer",
        ),
    ],
)
def test_config_file_mistakes_name_key_value_and_rule(
    tmp_path: Path, config: str, words: str
) -> None:
    write_config(tmp_path, config)
    with pytest.raises(ConfigurationError, match=words) as caught:
        load_settings()
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, PgQueueError)
    assert str(caught.value).startswith("invalid settings: ")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("task:\n  dns: x\n", "unknown setting 'dns' in {path}: did you mean 'dsn'?"),
        (
            "task:\n  rabbitmq: {hots: x}\n",
            "unknown setting 'rabbitmq.hots' in {path}: did you mean 'rabbitmq.host'?",
        ),
        (
            "task:\n  defaults: {queue: q, colour: red}\n",
            "unknown setting 'defaults.colour' in {path}: not one of queue, priority, max_retries",
        ),
        (
            "task:\n  dns: x\n  bogus: 1\n",
            "unknown settings in {path}: 'dns' (did you mean 'dsn'?), 'bogus' (not one of dsn, ",
        ),
        (
            "tasks:\n  dsn: x\n",
            "unknown section 'tasks' in {path}: did you mean 'task'? (pgqueue reads its "
            "settings from the 'task:' section)",
        ),
        (
            "dsn: x\nbroker: database\n",
            "'dsn', 'broker' in {path} must be inside the 'task:' section: indent the settings "
            "under a line `task:`",
        ),
    ],
)
def test_config_file_typos_say_what_was_meant(tmp_path: Path, config: str, message: str) -> None:
    write_config(tmp_path, config)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert str(caught.value).startswith(message.format(path=Path("config/services.yaml")))


def test_a_file_of_other_services_only_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(tmp_path, "redis:\n  host: cache\ntask_runner: {}\n")
    assert load_settings() == load_settings(dsn=None)
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "config/services.yaml has no 'task:' section (it has 'redis', 'task_runner'): pgqueue "
        "uses its defaults and PGQUEUE_* variables"
    ]


def test_other_sections_beside_task_are_other_services(tmp_path: Path) -> None:
    write_config(tmp_path, "task:\n  lease_seconds: 5\ntasks_db: {url: x}\n")
    assert load_settings().lease_seconds == 5


def test_an_unknown_keyword_names_the_setting_it_resembles() -> None:
    with pytest.raises(ConfigurationError, match=r"dns='x': not a setting, did you mean 'dsn'\?"):
        load_settings(dns="x")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("PGQUEUE_LEASE_SECONDS", "-1", r"lease_seconds='-1': Input should be greater than 0"),
        ("PGQUEUE_BROKER", "kafka", r"broker='kafka': Input should be 'database' or 'rabbitmq'"),
        ("PGQUEUE_SHUTDOWN_GRACE_SECONDS", "soon", r"shutdown_grace_seconds='soon': .*number"),
        ("PGQUEUE_MAX_PAYLOAD_BYTES", "0", r"max_payload_bytes='0': .*greater than 0"),
    ],
)
def test_environment_mistakes_name_key_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=words):
        load_settings()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("task: [1, 2]\n", r"'task' must be a mapping"),
        ("- a list\n", r"must hold a mapping with a 'task:' section"),
        ("task:\n  dsn: [unclosed\n", r"is not valid YAML"),
    ],
)
def test_config_file_shape_mistakes(tmp_path: Path, config: str, words: str) -> None:
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigurationError, match=words) as caught:
        load_settings()
    if "mapping" in words:
        assert "services.yaml" in str(caught.value) and str(path.name) in str(caught.value)


def test_config_without_task_section_means_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "other: {a: 1}\n")
    settings = load_settings()
    assert settings.defaults.queue == "default" and settings.lease_seconds == 30.0
    write_config(tmp_path, "")
    assert load_settings().defaults.queue == "default"


def test_sections_from_json_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_RABBITMQ", '{"host": "json-host", "port": 1}')
    monkeypatch.setenv("PGQUEUE_RABBITMQ__PORT", "5674")  # one key over the JSON object
    monkeypatch.setenv("pgqueue_status_tracking", "Off")  # names without regard to case
    settings = load_settings()
    assert (settings.rabbitmq.host, settings.rabbitmq.port) == ("json-host", 5674)
    assert settings.status_tracking is False
    monkeypatch.setenv("PGQUEUE_RABBITMQ", "not json")
    with pytest.raises(ConfigurationError, match=r"rabbitmq='not json': .*valid dictionary"):
        load_settings()


def test_copies_and_plain_values_keep_the_rules() -> None:
    settings = load_settings(rabbitmq={"password": "s3cret"}, imports="a, b")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.rabbitmq.password)
    plain = settings.to_dict()
    assert plain["rabbitmq"]["password"] == "s3cret" and plain["imports"] == ["a", "b"]
    assert load_settings(**plain) == settings
    assert list(plain) == list(Settings.field_names())
    assert dataclasses.replace(settings, lease_seconds="5").lease_seconds == 5.0
    with pytest.raises(ConfigurationError, match=r"lease_seconds=-1: .*greater than 0"):
        dataclasses.replace(settings, lease_seconds=-1)


def test_worker_import_leaves_pydantic_and_yaml_out(tmp_path: Path) -> None:
    """The worker's memory: pydantic, pydantic-settings and PyYAML are not imported by
    pgqueue itself (without a config file; typed arguments import pydantic when used)."""
    code = (
        "import sys, pgqueue.cli.worker, pgqueue.settings as s; s.get_settings(); "
        "print([m for m in ('pydantic', 'pydantic_settings', 'yaml') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_a_misspelt_variable_is_named_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PGQUEUE_LEASE_SECOND", "5")
    monkeypatch.setenv("PGQUEUE_DNS", "postgresql://x@h/db")
    monkeypatch.setenv("PGQUEUE_RABBITMQ_HOST", "mq")  # one underscore: not the section's key
    # Not close to any setting, a setting's name with words of the user's own around it,
    # and pgqueue's own variables that are no settings: silent.
    monkeypatch.setenv("PGQUEUE_SOMETHING_ELSE", "1")
    monkeypatch.setenv("PGQUEUE_TEST_RABBITMQ_URL", "amqp://x")
    monkeypatch.setenv("PGQUEUE_DSN_READONLY", "postgresql://x@h/db")
    monkeypatch.setenv("PGQUEUE_LOG_LEVEL", "INFO")
    settings = load_settings()
    assert (settings.lease_seconds, settings.dsn, settings.rabbitmq.host) == (
        30.0,
        None,
        "localhost",
    )
    warnings = sorted(record.getMessage() for record in caplog.records)
    assert warnings == [
        f"{variable} is not a pgqueue setting and is ignored; did you mean {meant}?"
        for variable, meant in [
            ("PGQUEUE_DNS", "PGQUEUE_DSN"),
            ("PGQUEUE_LEASE_SECOND", "PGQUEUE_LEASE_SECONDS"),
            ("PGQUEUE_RABBITMQ_HOST", "PGQUEUE_RABBITMQ__HOST"),
        ]
    ]
