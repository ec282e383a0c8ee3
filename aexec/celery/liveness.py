"""Which Celery workers are alive, from the events Celery workers send about themselves.

A Celery worker (heartbeats on, Celery's default) publishes ``worker-online``, then a
``worker-heartbeat`` every ``freq`` seconds (2 by default), and ``worker-offline`` when it
shuts down, to Celery's event exchange (``celeryev``, routing keys ``worker.*``).  A worker
killed (SIGKILL, the OOM killer, a lost machine) just falls silent.  As Celery's own
monitors do, a worker is taken for gone once it said ``worker-offline``, or once it was
silent for twice its heartbeat period.

Silence is only evidence when someone was there to hear: nothing is concluded while the
listener is not listening, nor before it has listened that long.  A worker never heard is
judged the same way (it may have died before its first heartbeat reached the listener),
but only once some worker was heard, and only if it was first named (:meth:`named`: a
task started on it) before the listener had listened long enough to hear it: a worker
first named later than that, and never heard, sends no heartbeats (``celery worker
--without-heartbeat``, or events to another exchange), and nothing is concluded about it.
Pure bookkeeping: the caller passes the (monotonic) time.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FREQ = 2.0  # Celery's worker_heartbeat period, when an event does not say
EXPIRE_WINDOW = 2.0  # gone after this many periods of silence (Celery's 200 %)

ONLINE, HEARTBEAT, OFFLINE = "worker-online", "worker-heartbeat", "worker-offline"


@dataclass(slots=True)
class _Seen:
    at: float
    freq: float
    offline: bool = False


class WorkerLiveness:
    """Last heard of each Celery worker (by hostname, as Celery names it)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._named: dict[str, float] = {}  # when each worker was first named
        self._listening_since: float | None = None

    def listening(self, now: float) -> None:
        """The listener (re)started: silence counts from ``now``."""
        self._listening_since = now

    @property
    def is_listening(self) -> bool:
        return self._listening_since is not None

    def deaf(self) -> None:
        """The listener stopped: no silence means anything until it listens again."""
        self._listening_since = None

    def named(self, hostname: str, now: float) -> None:
        """A task was seen running on worker ``hostname`` at ``now``."""
        self._named.setdefault(hostname, now)

    def heard(self, hostname: str, kind: str, now: float, freq: float | None = None) -> None:
        """Worker ``hostname`` sent event ``kind`` (``worker-*``) at ``now``."""
        period = freq if freq is not None and freq > 0 else DEFAULT_FREQ
        self._seen[hostname] = _Seen(now, period, offline=kind == OFFLINE)

    def gone(self, hostname: str, now: float) -> str | None:
        """Why worker ``hostname`` is taken for gone at ``now`` (None while it is alive or
        nothing is known of it)."""
        seen = self._seen.get(hostname)
        if seen is not None and seen.offline:
            return f"Celery worker {hostname} went offline (worker-offline)"
        since = self._listening_since
        if since is None:
            return None
        if seen is None:
            if not self._seen:
                return None  # no worker heard at all: heartbeats are off, or go elsewhere
            freq = max(other.freq for other in self._seen.values())
            if self._named.get(hostname, since) - since > freq * EXPIRE_WINDOW:
                return None  # named after the listener could have heard it: no heartbeats
            silent = now - since
            if silent <= freq * EXPIRE_WINDOW:
                return None
            return (
                f"Celery worker {hostname} sent no heartbeat in {silent:.1f} s (other "
                f"workers send one every {freq:g} s)"
            )
        silent = now - max(seen.at, since)
        if silent <= seen.freq * EXPIRE_WINDOW:
            return None
        return (
            f"Celery worker {hostname} stopped sending heartbeats ({silent:.1f} s of silence, "
            f"it sends one every {seen.freq:g} s)"
        )


__all__ = ["HEARTBEAT", "OFFLINE", "ONLINE", "WorkerLiveness"]
