"""Webhook signing, configuration and the deliveries a run's ending decides (pure)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from aexec.config import Settings, Webhook, parse_webhooks
from aexec.errors import ConfigError
from aexec.events import Event, EventKind
from aexec.webhooks import WebhookPolicy, Webhooks, delivery_id, sign, verify


def test_the_signature_is_an_hmac_sha256_of_the_time_a_dot_and_the_raw_body() -> None:
    body = b'{"event": "run_failed"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body, 1700000000) == f"t=1700000000,v1={expected}"


def test_verify_accepts_a_fresh_signature_and_refuses_a_changed_body_secret_or_old_time() -> None:
    body = b"{}"
    now = int(time.time())
    assert verify("k", body, sign("k", body, now))
    assert not verify("k", b"{ }", sign("k", body, now))
    assert not verify("other", body, sign("k", body, now))
    assert not verify("k", body, sign("k", body, now - 3600))
    assert not verify("k", body, "v1=abc")


def test_webhooks_are_read_from_aexec_yaml(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    config = tmp_path / "aexec.yaml"
    config.write_text(
        "webhooks:\n"
        "  - url: https://hooks.example/aexec\n"
        "    events: [run_failed, run_cancelled]\n"
        "    secret: whsec-1\n"
        "    timeout: 3\n"
    )
    settings = Settings.resolve(config_file=str(config), environ={})
    assert settings.webhooks == (
        Webhook(
            "https://hooks.example/aexec", frozenset({"run_failed", "run_cancelled"}), "whsec-1", 3
        ),
    )
    assert "whsec-1" not in repr(settings) and "whsec-1" in settings.secret_values()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"url": "x"}, "webhooks must be a list"),
        ([{"url": "ftp://h/x", "events": ["run_failed"], "secret": "s"}], "webhooks\\[0\\].url"),
        ([{"url": "http://h", "events": [], "secret": "s"}], "webhooks\\[0\\].events must"),
        ([{"url": "http://h", "events": ["run_done"], "secret": "s"}], "unknown event 'run_done'"),
        ([{"url": "http://h", "events": ["run_failed"]}], "secret must be a non-empty"),
        ([{"url": "http://h", "events": ["run_failed"], "secret": "s", "retry": 1}], "'retry'"),
        ([{"url": "http://h", "events": ["run_failed"], "secret": "s", "timeout": 0}], "timeout"),
        (
            [{"url": "http://h", "events": ["run_failed"], "secret": "s"}] * 2,
            "each url may appear once",
        ),
    ],
)
def test_a_bad_webhook_entry_is_a_config_error_naming_it(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_webhooks(value)


def test_an_ending_makes_one_delivery_per_subscribed_webhook_and_the_same_one_again() -> None:
    hooks = Webhooks(
        [
            Webhook("http://a/h", frozenset({"run_failed"}), "s"),
            Webhook("http://b/h", frozenset({"run_succeeded", "run_failed"}), "s"),
            Webhook("http://c/h", frozenset({"run_succeeded"}), "s"),
        ]
    )
    ending = Event(EventKind.RUN_FAILED, "r-1", 5.0, data={"error": "boom"})
    step = Event(EventKind.STEP_FAILED, "r-1", 4.0, "a", 1, {"error": {}})
    made = hooks.outbox([step, ending], {})
    assert [d.url for d in made] == ["http://a/h", "http://b/h"]
    assert [d.id for d in made] == [delivery_id("r-1", d.url, "run_failed") for d in made]
    assert [d.id for d in hooks.outbox([ending], {})] == [d.id for d in made]  # deterministic
    body = json.loads(made[0].body)
    assert body == {
        "id": made[0].id,
        "event": "run_failed",
        "run_id": "r-1",
        "pipeline": None,
        "status": "failed",
        "error": "boom",
        "ts": 5.0,
    }


def test_retries_back_off_exponentially_up_to_a_bound_and_then_give_up() -> None:
    policy = WebhookPolicy(backoff=1.0, backoff_max=5.0, max_attempts=5)
    delays = [policy.next_at(n, 100.0) for n in range(1, 6)]
    assert [d is None for d in delays] == [False, False, False, False, True]
    for got, want in zip(delays[:4], [1.0, 2.0, 4.0, 5.0], strict=True):
        assert got is not None and want <= got - 100.0 <= want * 1.1
