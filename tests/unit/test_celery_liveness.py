"""Which Celery workers are alive, from their worker-* events (aexec.celery.liveness)."""

from __future__ import annotations

from aexec.celery.liveness import HEARTBEAT, OFFLINE, ONLINE, WorkerLiveness
from aexec.celery.protocol import worker_event


def test_a_worker_silent_for_two_heartbeat_periods_is_gone() -> None:
    live = WorkerLiveness()
    live.listening(0.0)
    live.heard("w1@host", ONLINE, 1.0, 2.0)
    live.heard("w1@host", HEARTBEAT, 3.0, 2.0)
    assert live.gone("w1@host", 7.0) is None  # 4 s: two periods
    why = live.gone("w1@host", 7.5)
    assert why is not None and "w1@host stopped sending heartbeats" in why
    live.heard("w1@host", HEARTBEAT, 7.6, 2.0)  # back (a restart under the same name)
    assert live.gone("w1@host", 8.0) is None


def test_a_worker_that_went_offline_is_gone_at_once() -> None:
    live = WorkerLiveness()
    live.listening(0.0)
    live.heard("w1@host", OFFLINE, 1.0, 2.0)
    assert live.gone("w1@host", 1.0) == "Celery worker w1@host went offline (worker-offline)"


def test_a_worker_never_heard_is_gone_once_others_are_heard_and_it_stays_silent() -> None:
    live = WorkerLiveness()
    live.listening(10.0)
    assert live.gone("quiet@host", 100.0) is None  # no worker heard: heartbeats are off
    live.heard("w1@host", HEARTBEAT, 11.0, 3.0)
    assert live.gone("died@host", 16.0) is None  # 6 s: two of the others' periods
    why = live.gone("died@host", 16.5)
    assert why is not None and "died@host sent no heartbeat in 6.5 s" in why
    live.deaf()
    assert live.gone("died@host", 100.0) is None


def test_a_worker_first_named_long_after_listening_and_never_heard_sends_no_heartbeats() -> None:
    live = WorkerLiveness()
    live.listening(0.0)
    live.heard("w1@host", HEARTBEAT, 1.0, 2.0)
    live.named("quiet@host", 30.0)  # a task started on it; we have listened for 30 s
    assert live.gone("quiet@host", 100.0) is None  # --without-heartbeat: not judged
    live.named("early@host", 3.0)  # named within the first 4 s: it may have died unheard
    assert live.gone("early@host", 4.5) is not None


def test_nothing_is_concluded_while_not_listening() -> None:
    live = WorkerLiveness()
    live.listening(0.0)
    live.heard("w1@host", HEARTBEAT, 1.0, 2.0)
    live.deaf()  # the events channel dropped: silence says nothing
    assert live.gone("w1@host", 60.0) is None
    live.listening(60.0)  # listening again: silence counts from now
    assert live.gone("w1@host", 63.0) is None
    assert live.gone("w1@host", 64.5) is not None


def test_a_worker_event_is_read_from_celerys_event_body() -> None:
    event = {"type": "worker-heartbeat", "hostname": "w1@h", "freq": 2.0, "active": 1}
    assert worker_event(event) == ("worker-heartbeat", "w1@h", 2.0)
    assert worker_event({"type": "worker-offline", "hostname": "w1@h"}) == (
        "worker-offline",
        "w1@h",
        None,
    )
    assert worker_event({"type": "task-started", "hostname": "w1@h"}) is None
    assert worker_event({"type": "worker-heartbeat"}) is None
    assert worker_event(["not", "a", "dict"]) is None
