"""Credentials in every form of URL are redacted, and the log masks what a library lets slip."""

from __future__ import annotations

import logging

import pytest

from aexec.config import Settings
from aexec.log import RedactingFilter, hide_secrets
from aexec.redaction import redact, url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app@db/x?password=hunter2&sslmode=require",
            "postgresql://app@db/x?password=***&sslmode=require",
        ),
        (
            "postgresql://app:hunter2@db/x?sslpassword=hunter2&sslrootcert=/ca.pem",
            "postgresql://app:***@db/x?sslpassword=***&sslrootcert=/ca.pem",
        ),
        ("amqps://u@mq/?cafile=/ca.pem&token=hunter2", "amqps://u@mq/?cafile=/ca.pem&token=***"),
        ("s3://bucket/p?AWS_SECRET_ACCESS_KEY=hunter2", "s3://bucket/p?AWS_SECRET_ACCESS_KEY=***"),
        ("amqp://h/?Secret=hunter2&prefix=x", "amqp://h/?Secret=***&prefix=x"),
        ("amqp://h/?pass%77ord=hunter2", "amqp://h/?pass%77ord=***"),
        ("amqp://h/?heartbeat=5&prefix=p", "amqp://h/?heartbeat=5&prefix=p"),
    ],
)
def test_redact_hides_secret_like_query_values_as_well(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "amqp://user:hunter2@[::1/?password=hunter2",  # unparseable
        "postgresql://u@[bad/db?sslpassword=hunter2",
        "postgresql://u:hunter2@h/d?password=hunter2#frag",
        "amqp://u:hunter2@h/?a=1&api_key=hunter2&b=2",
    ],
)
def test_redact_never_lets_a_secret_through(url: str) -> None:
    assert "hunter2" not in redact(url)


def test_url_secrets_are_the_password_and_the_secret_like_query_values() -> None:
    url = "postgresql://u:p%40ss@h/d?password=q+w&sslmode=require&sslpassword=k%2Fy"
    found = url_secrets(url)
    assert {"p%40ss", "p@ss", "q w", "k/y"} <= set(found)
    assert "require" not in found
    assert url_secrets(None) == url_secrets("memory://") == []


def test_settings_name_every_credential_they_hold_and_never_show_the_secret() -> None:
    settings = Settings(
        broker="amqp://u:brokerpw@mq/",
        store="postgresql://u@db/x?password=storepw",
        secret="signing-secret",
    )
    assert {"brokerpw", "storepw", "signing-secret"} <= set(settings.secret_values())
    assert "signing-secret" not in repr(settings)


def test_the_log_filter_masks_secrets_in_messages_arguments_and_tracebacks() -> None:
    logger = logging.getLogger("aexec.test.redaction")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.propagate = False
    try:
        hide_secrets(["hunter2", "ab"], logger)  # "ab" is too short to mask
        logger.warning("connecting to %s", "amqp://u:x@h/?password=hunter2 ab")
        try:
            raise ValueError("bad password hunter2")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = [handler.format(record) for record in records]
    assert text[0] == "connecting to amqp://u:x@h/?password=*** ab"
    assert "hunter2" not in text[1] and "bad password ***" in text[1]
