"""Settings: flags > environment > config file > defaults; URLs validated; secrets redacted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aexec.config import DEFAULT_HOME, DEFAULT_INLINE_THRESHOLD, Settings, load_file, redact
from aexec.errors import ConfigError

NO_ENV: dict[str, str] = {}


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "aexec.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_are_embedded() -> None:
    settings = Settings.resolve(environ=NO_ENV)
    assert settings == Settings()
    assert settings.broker is None and settings.store is None and settings.objects is None
    assert settings.embedded
    assert settings.home == DEFAULT_HOME
    assert settings.inline_threshold == DEFAULT_INLINE_THRESHOLD
    assert settings.fail_fast is False


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path / "h"))
    assert settings.store_url == f"sqlite:///{tmp_path / 'h' / 'aexec.db'}"
    assert settings.objects_url == f"file://{tmp_path / 'h' / 'objects'}"


def test_explicit_urls_are_used_as_given() -> None:
    settings = Settings(store="postgresql://db/x", objects="s3://bucket/prefix")
    assert settings.store_url == "postgresql://db/x"
    assert settings.objects_url == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("broker", "embedded"),
    [(None, True), ("memory://", True), ("amqp://localhost", False), ("amqps://h", False)],
)
def test_embedded_means_no_real_broker(broker: str | None, embedded: bool) -> None:
    assert Settings(broker=broker).embedded is embedded


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "broker: amqp://guest:guest@localhost/\nconcurrency: 7\nheartbeat_interval: 2.5\n"
        "fail_fast: true\n",
    )
    settings = Settings.resolve(config_file=path, environ=NO_ENV)
    assert settings.broker == "amqp://guest:guest@localhost/"
    assert settings.concurrency == 7
    assert settings.heartbeat_interval == 2.5
    assert settings.fail_fast is True
    assert settings.store is None  # untouched settings keep their defaults


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "broker: amqp://file/\nstore: sqlite:///file.db\nconcurrency: 7\n")
    env = {"AEXEC_BROKER": "amqp://env/", "AEXEC_CONCURRENCY": "9", "UNRELATED": "x"}
    settings = Settings.resolve(config_file=path, environ=env)
    assert settings.broker == "amqp://env/"
    assert settings.concurrency == 9
    assert settings.store == "sqlite:///file.db"


def test_flags_override_the_environment_and_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "broker: amqp://file/\nobjects: file:///from-file\n")
    env = {"AEXEC_BROKER": "amqp://env/", "AEXEC_STORE": "postgresql://env/db"}
    settings = Settings.resolve(
        {"broker": "amqp://flag/", "store": None}, config_file=path, environ=env
    )
    assert settings.broker == "amqp://flag/"
    assert settings.store == "postgresql://env/db"  # a None flag is "not given"
    assert settings.objects == "file:///from-file"


def test_every_documented_environment_variable_is_read() -> None:
    env = {
        "AEXEC_BROKER": "amqp://h/",
        "AEXEC_STORE": "postgresql://h/db",
        "AEXEC_OBJECTS": "s3://bucket/p",
        "AEXEC_HOME": "/tmp/aexec-home",
        "AEXEC_INLINE_THRESHOLD": "1024",
        "AEXEC_CONCURRENCY": "3",
        "AEXEC_HEARTBEAT_INTERVAL": "0.25",
    }
    settings = Settings.resolve(environ=env)
    assert (settings.broker, settings.store, settings.objects, settings.home) == (
        "amqp://h/",
        "postgresql://h/db",
        "s3://bucket/p",
        "/tmp/aexec-home",
    )
    assert (settings.inline_threshold, settings.concurrency) == (1024, 3)
    assert settings.heartbeat_interval == 0.25


def test_explicit_environ_replaces_the_process_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("AEXEC_BROKER", "amqp://process/")
    assert Settings.resolve(environ=NO_ENV).broker is None
    assert Settings.resolve().broker == "amqp://process/"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("yes", True), ("ON", True), ("false", False), ("0", False)],
)
def test_boolean_flags_parse_strings(text: str, expected: bool) -> None:
    assert Settings.resolve({"fail_fast": text}, environ=NO_ENV).fail_fast is expected


def test_merged_applies_non_none_values() -> None:
    settings = Settings(concurrency=4).merged({"concurrency": None, "home": "/x"})
    assert (settings.concurrency, settings.home) == (4, "/x")


def test_empty_config_file_is_no_settings(tmp_path: Path) -> None:
    assert load_file(write_yaml(tmp_path, "")) == {}
    assert Settings.resolve(config_file=write_yaml(tmp_path, "# nothing"), environ=NO_ENV) == (
        Settings()
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("broker: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("colour: blue\n", "unknown setting 'colour'"),
        ("concurrency: many\n", "'concurrency' has an invalid value"),
        ("concurrency: 0\n", "concurrency must be >= 1"),
        ("inline_threshold: -1\n", "inline_threshold"),
        ("heartbeat_interval: 0\n", "heartbeat_interval"),
    ],
)
def test_bad_config_files_raise_config_error(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.resolve(config_file=write_yaml(tmp_path, text), environ=NO_ENV)


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        Settings.resolve(config_file=str(tmp_path / "absent.yaml"), environ=NO_ENV)


def test_bad_environment_value_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        Settings.resolve(environ={"AEXEC_CONCURRENCY": "lots"})


def test_unknown_flag_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'brokr'"):
        Settings.resolve({"brokr": "amqp://x/"}, environ=NO_ENV)


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("broker", "memory://"),
        ("broker", "amqp://guest:guest@127.0.0.1:5672/"),
        ("broker", "amqps://user:pw@rabbit.example:5671/vhost"),
        ("store", "memory://"),
        ("store", "sqlite:///tmp/aexec.db"),
        ("store", "postgresql://user:pw@127.0.0.1:5432/aexec"),
        ("store", "postgres://127.0.0.1/aexec"),
        ("objects", "memory://"),
        ("objects", "file:///tmp/objects"),
        ("objects", "s3://bucket/prefix"),
    ],
)
def test_supported_url_schemes_are_accepted(field: str, url: str) -> None:
    assert getattr(Settings(**{field: url}), field) == url


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("broker", "redis://user:hunter2@localhost:6379/0"),
        ("broker", "postgresql://user:hunter2@localhost/db"),
        ("broker", "localhost:5672"),
        ("broker", ""),
        ("store", "mysql://root:hunter2@db/aexec"),
        ("store", "amqp://guest:hunter2@localhost/"),
        ("objects", "gs://user:hunter2@bucket/prefix"),
        ("objects", "/plain/path"),
        ("broker", "amqp://user:hunter2@[::1"),  # unparseable
        ("store", "postgresql://user:hunter2@[bad/db"),
    ],
)
def test_bad_url_raises_config_error_without_the_password(field: str, url: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        Settings(**{field: url})
    assert "hunter2" not in str(info.value)


def test_bad_url_from_the_environment_is_redacted_too() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.resolve(environ={"AEXEC_STORE": "mysql://root:hunter2@db/x"})
    assert "hunter2" not in str(info.value)
    assert "mysql://root:***@db/x" in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("postgresql://u:s3cr%40t@db:5432/x?ssl=1", "postgresql://u:***@db:5432/x?ssl=1"),
        ("amqp://user:p@ss@host/", "amqp://user:***@host/"),
        ("amqp://user:@host/", "amqp://user:***@host/"),
        ("amqp://user@host/", "amqp://user@host/"),
        ("amqp://localhost/", "amqp://localhost/"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("sqlite:///tmp/aexec.db", "sqlite:///tmp/aexec.db"),
        ("memory://", "memory://"),
    ],
)
def test_redact_hides_only_the_password(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize("url", ["amqp://user:hunter2@[::1", "amqp://u:hunter2@[::1]:bad/"])
def test_redact_never_fails_and_never_leaks(url: str) -> None:
    assert "hunter2" not in redact(url)


def test_redact_keeps_the_password_out_of_repeated_text() -> None:
    # The password also appears in the path: only the credential is hidden.
    assert redact("amqp://guest:guest@localhost/guest") == "amqp://guest:***@localhost/guest"
