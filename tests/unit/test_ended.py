"""The ended runs a worker remembers: bounded the way the retained topic is."""

from __future__ import annotations

import time

from aexec.ended import EndedRuns


def test_a_run_announced_ended_is_remembered_once() -> None:
    ended = EndedRuns()
    assert ended.add("r1", time.time(), 40)
    assert not ended.add("r1", time.time(), 40)  # read again after a reconnection
    assert "r1" in ended and "r2" not in ended
    assert len(ended) == 1


def test_runs_older_than_the_retention_are_forgotten() -> None:
    ended = EndedRuns(max_age=3600.0)
    ended.add("old", time.time() - 7200.0, 40)
    ended.add("new", time.time(), 40)
    assert "old" not in ended and "new" in ended


def test_the_oldest_runs_are_forgotten_beyond_the_retained_size() -> None:
    ended = EndedRuns(max_bytes=100)
    for i in range(5):
        ended.add(f"r{i}", time.time(), 40)
    assert [f"r{i}" in ended for i in range(5)] == [False, False, False, True, True]
