"""Settings: which backends to use and how; flags > environment > ``-c aexec.yaml`` > defaults."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aexec.errors import ConfigError
from aexec.redaction import redact, url_secrets

DEFAULT_HOME = ".aexec"
DEFAULT_INLINE_THRESHOLD = 64 * 1024

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""The largest message body aexec publishes or decodes (a step message, a completion, a
batch of events): bodies over it are refused before decoding.  Fixed, as every process
must agree on it; values larger than a message can hold travel by reference."""

MAX_INLINE_THRESHOLD = MAX_MESSAGE_SIZE // 16
"""The largest ``inline_threshold``: an output carried inline must leave its message room."""

DEFAULT_MAX_VALUE_SIZE = 256 * 1024 * 1024
"""The default ``max_value_size``: the largest encoded step output, input or run result."""

_ENV = {
    "broker": "AEXEC_BROKER",
    "store": "AEXEC_STORE",
    "objects": "AEXEC_OBJECTS",
    "home": "AEXEC_HOME",
    "inline_threshold": "AEXEC_INLINE_THRESHOLD",
    "concurrency": "AEXEC_CONCURRENCY",
    "heartbeat_interval": "AEXEC_HEARTBEAT_INTERVAL",
    "worker_timeout": "AEXEC_WORKER_TIMEOUT",
    "ack_after": "AEXEC_ACK_AFTER",
    "drain_grace": "AEXEC_DRAIN_GRACE",
    "cancel_grace": "AEXEC_CANCEL_GRACE",
    "coalesce": "AEXEC_COALESCE",
    "commit_delay": "AEXEC_COMMIT_DELAY",
    "queue_prefix": "AEXEC_QUEUE_PREFIX",
    "remote": "AEXEC_REMOTE",
    "lease": "AEXEC_LEASE",
    "secret": "AEXEC_SECRET",
    "max_value_size": "AEXEC_MAX_VALUE_SIZE",
    "step_log_level": "AEXEC_STEP_LOG_LEVEL",
    "metrics_port": "AEXEC_METRICS_PORT",
    "metrics_host": "AEXEC_METRICS_HOST",
    "celery_broker": "AEXEC_CELERY_BROKER",
    "celery_backend": "AEXEC_CELERY_BACKEND",
    "limits": "AEXEC_LIMITS",
    "max_concurrent_runs": "AEXEC_MAX_CONCURRENT_RUNS",
    "run_limits": "AEXEC_RUN_LIMITS",
}

COORDINATOR_METRICS_PORT = 9180
WORKER_METRICS_PORT = 9181
"""The ports ``aexec coordinator`` and ``aexec worker start`` serve ``/metrics``,
``/healthz`` and ``/readyz`` on unless ``metrics_port`` says otherwise (0: not at all)."""

BROKER_SCHEMES = ("memory", "amqp", "amqps")
STORE_SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
OBJECTS_SCHEMES = ("memory", "file", "s3")


WEBHOOK_EVENTS = ("run_succeeded", "run_failed", "run_cancelled")
"""The events a webhook may subscribe to: a run's ending, by its event kind."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """One ``webhooks:`` entry of aexec.yaml: POST a signed JSON notification to ``url``
    when a run ends with one of ``events``; ``timeout`` bounds each attempt (seconds)."""

    url: str
    events: frozenset[str]
    secret: str = field(repr=False)
    timeout: float = 10.0

    @classmethod
    def parse(cls, value: Any, index: int) -> Webhook:
        where = f"webhooks[{index}]"
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping with url, events and secret")
        unknown = sorted(set(value) - {"url", "events", "secret", "timeout"})
        if unknown:
            raise ConfigError(f"{where} has an unknown key {unknown[0]!r}")
        url, events, secret = value.get("url"), value.get("events"), value.get("secret")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"{where}.url must be an http:// or https:// URL")
        if not urlsplit(url).hostname:
            raise ConfigError(f"{where}.url {redact(url)!r} names no host")
        if not isinstance(events, list) or not events:
            raise ConfigError(f"{where}.events must list events: {', '.join(WEBHOOK_EVENTS)}")
        for event in events:
            if event not in WEBHOOK_EVENTS:
                raise ConfigError(
                    f"{where}.events: unknown event {event!r} (one of {', '.join(WEBHOOK_EVENTS)})"
                )
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.secret must be a non-empty string (it signs each call)")
        timeout = value.get("timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"{where}.timeout must be a positive number of seconds")
        return cls(url, frozenset(events), secret, float(timeout))


def parse_webhooks(value: Any) -> tuple[Webhook, ...]:
    """The ``webhooks:`` list of aexec.yaml; a :class:`~aexec.errors.ConfigError` naming
    the entry at fault."""
    if isinstance(value, tuple) and all(isinstance(w, Webhook) for w in value):
        return value
    if not isinstance(value, list):
        raise ConfigError("webhooks must be a list of {url, events, secret}")
    hooks = tuple(Webhook.parse(item, i) for i, item in enumerate(value))
    urls = [hook.url for hook in hooks]
    if len(set(urls)) != len(urls):
        raise ConfigError("webhooks: each url may appear once")
    return hooks


@dataclass(frozen=True, slots=True)
class Settings:
    """Backend URLs and engine knobs.  ``None`` URLs mean the embedded defaults under ``home``.

    Durations are float seconds; sizes are bytes.  ``secret`` (``AEXEC_SECRET``) signs and
    verifies every message (:mod:`aexec.transport.signed`); it never appears in ``repr``.
    ``max_value_size`` bounds an encoded step output, input or run result: a step that
    returns more fails, and values up to it load from the object store (messages stay
    under :data:`MAX_MESSAGE_SIZE`, whatever this says).
    """

    broker: str | None = None
    store: str | None = None
    objects: str | None = None
    home: str = DEFAULT_HOME
    inline_threshold: int = DEFAULT_INLINE_THRESHOLD
    concurrency: int = 100
    thread_pool_size: int = 0  # 0: min(32, cpu_count + 4)
    heartbeat_interval: float = 1.0
    worker_timeout: float = 10.0  # a worker silent this long loses its running steps
    ack_after: float = 10.0  # a step running this long is acked and protected by heartbeats
    drain_grace: float = 60.0  # a stopping worker's steps get this long to finish
    cancel_grace: float = 5.0  # a cancelled step in a child process is killed after this
    coalesce: float = 0.001  # how long a worker's completion may wait to share a message; 0: never
    # how long a coordinator's pass that dispatches nothing may leave its events uncommitted
    # for the next one that does (aexec.deferral); 0: every pass commits; None: the
    # store's default (aexec.deferral.default_delay)
    commit_delay: float | None = None
    lease: float = 15.0  # a coordinator's hold on its runs; a dead one's runs wait this long
    queue_prefix: str = "aexec"  # every broker queue and exchange name starts with it
    remote: bool = False  # submit to a running `aexec coordinator` instead of coordinating here
    fail_fast: bool = False
    secret: str | None = field(default=None, repr=False)
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE
    step_log_level: str = "INFO"  # steps' log records from this level on are recorded
    metrics_port: int | None = None  # None: the command's default; 0: no endpoint
    metrics_host: str = "0.0.0.0"  # probes and scrapers come from other hosts
    webhooks: tuple[Webhook, ...] = ()  # aexec.yaml only
    # Celery steps: the broker its workers consume (default: ``broker`` when it is RabbitMQ)
    # and the result backend they report to (``rpc://`` or ``redis://...``).
    celery_broker: str | None = None
    celery_backend: str = "rpc://"
    # named concurrency limits for ``@step(uses=NAME)``: NAME → running attempts at once
    limits: Mapping[str, int] = field(default_factory=dict)
    # run admission (aexec.admission): runs a coordinator starts at once, and per tag
    max_concurrent_runs: int | None = None
    run_limits: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_url("broker", self.broker, BROKER_SCHEMES)
        _check_url("store", self.store, STORE_SCHEMES)
        _check_url("objects", self.objects, OBJECTS_SCHEMES)
        _check_url("celery broker", self.celery_broker, ("amqp", "amqps"))
        _check_url("celery backend", self.celery_backend, ("rpc", "redis", "rediss"))
        if not 0 <= self.inline_threshold <= MAX_INLINE_THRESHOLD:
            raise ConfigError(f"inline_threshold must be 0..{MAX_INLINE_THRESHOLD} bytes")
        if self.max_value_size < self.inline_threshold:
            raise ConfigError("max_value_size must be >= inline_threshold")
        if self.secret is not None and not self.secret:
            raise ConfigError("secret (AEXEC_SECRET) must not be empty when it is set")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be > 0")
        if self.lease <= 0:
            raise ConfigError("lease must be > 0")
        if not self.drain_grace >= 0:
            raise ConfigError("drain_grace must be >= 0")
        if not self.cancel_grace >= 0:
            raise ConfigError("cancel_grace must be >= 0")
        if not self.coalesce >= 0:
            raise ConfigError("coalesce must be >= 0")
        if self.commit_delay is not None and not self.commit_delay >= 0:
            raise ConfigError("commit_delay must be >= 0")
        if self.worker_timeout <= self.heartbeat_interval:
            raise ConfigError("worker_timeout must be longer than heartbeat_interval")
        if not isinstance(logging.getLevelName(self.step_log_level.upper()), int):
            raise ConfigError(
                f"step_log_level must be a log level name (DEBUG, INFO, WARNING, ERROR), "
                f"not {self.step_log_level!r}"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port must be 0 (off) .. 65535")
        if self.remote and self.embedded:
            raise ConfigError("submitting to a remote coordinator needs a broker (--broker)")

    @property
    def embedded(self) -> bool:
        """True when no broker is configured (or it is ``memory://``): workers run in-process."""
        return self.broker is None or self.broker.startswith("memory:")

    def secret_values(self) -> list[str]:
        """Every credential these settings hold (passwords and secret-like query values
        of the URLs, the signing secret), for a log filter to hide."""
        found = [
            *url_secrets(self.broker),
            *url_secrets(self.store),
            *url_secrets(self.objects),
            *url_secrets(self.celery_broker),
            *url_secrets(self.celery_backend),
        ]
        if self.secret:
            found.append(self.secret)
        for hook in self.webhooks:
            found.extend([hook.secret, *url_secrets(hook.url)])
        return list(dict.fromkeys(found))

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{Path(self.home) / 'aexec.db'}"

    @property
    def objects_url(self) -> str:
        return self.objects or f"file://{(Path(self.home) / 'objects').absolute()}"

    def merged(self, values: Mapping[str, Any]) -> Settings:
        """A copy with the non-None ``values`` applied."""
        return _apply(self, values)

    @classmethod
    def resolve(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        config_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Flags win over the environment, which wins over the config file and defaults."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_known(load_file(config_file)))
        env = os.environ if environ is None else environ
        values.update({k: env[v] for k, v in _ENV.items() if env.get(v) is not None})
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        # One construction at the end: a combination is checked only once it is complete.
        return _apply(cls(), values)


def _known(values: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(Settings)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}")
    return dict(values)


def load_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return data


def _apply(settings: Settings, values: Mapping[str, Any]) -> Settings:
    types = {f.name: f.type for f in fields(Settings)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in types:
            raise ConfigError(f"unknown setting {key!r}")
        changes[key] = _coerce(key, value, settings)
    return replace(settings, **changes) if changes else settings


_OPTIONAL_INT = frozenset({"metrics_port"})
_OPTIONAL_FLOAT = frozenset({"commit_delay"})


def _coerce(key: str, value: Any, settings: Settings) -> Any:
    if key == "webhooks":
        return parse_webhooks(value)
    if key in ("limits", "run_limits"):
        return parse_limits(value, key)
    if key == "max_concurrent_runs":
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number < 1:
            raise ConfigError(f"max_concurrent_runs must be a positive integer, not {value!r}")
        return number
    if key in _OPTIONAL_INT:
        current: Any = 0
    elif key in _OPTIONAL_FLOAT:
        current = 0.0
    else:
        current = getattr(settings, key)
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {key!r} has an invalid value {value!r}") from None
    return str(value)


def parse_limits(value: Any, what: str = "limits") -> dict[str, int]:
    """Named limits from a mapping (``limits: {gpu: 2}`` in aexec.yaml) or from text
    (``AEXEC_LIMITS="gpu=2,db=4"``, ``AEXEC_RUN_LIMITS="tenant=acme=2,team=4"``: the size
    follows the last ``=``); a :class:`ConfigError` for anything else."""
    if isinstance(value, str):
        pairs: list[tuple[Any, Any]] = []
        for part in value.split(","):
            if part.strip():
                name, sep, size = part.rpartition("=")
                if not sep:
                    raise ConfigError(f"{what} must look like 'gpu=2,db=4', not {value!r}")
                pairs.append((name.strip(), size.strip()))
        value = dict(pairs)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must map limit names to sizes, not {value!r}")
    limits: dict[str, int] = {}
    for name, size in value.items():
        try:
            number = int(size)
        except (TypeError, ValueError):
            number = 0
        if not isinstance(name, str) or not name or isinstance(size, bool) or number < 1:
            raise ConfigError(f"limit {name!r} must be a positive integer, not {size!r}")
        limits[name] = number
    return limits


def _check_url(what: str, url: str | None, schemes: tuple[str, ...]) -> None:
    if url is None:
        return
    try:
        scheme = urlsplit(url).scheme
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"invalid {what} URL {redact(url)!r}") from None
    if scheme not in schemes:
        raise ConfigError(
            f"unsupported {what} URL {redact(url)!r}: scheme must be one of "
            + ", ".join(f"{s}://" for s in schemes)
        )
