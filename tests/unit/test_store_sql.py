"""The SQL files' named sections (``aexec.store.sql``): one parser for both stores, and a
file whose sections differ from what its store declares fails loudly."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from aexec.events import Event, EventKind
from aexec.store import fold, postgres, rows, sql, sqlite

TEXT = """-- A header: not a statement.

-- name: first
-- Comments inside a section stay with its statement.
SELECT 1

-- name: second
UPDATE t
SET x = 1
"""


class Two(NamedTuple):
    first: str
    second: str


def test_each_section_runs_from_its_name_line_to_the_next() -> None:
    assert sql.parse(TEXT, "t.sql", ("first", "second")) == {
        "first": "-- Comments inside a section stay with its statement.\nSELECT 1",
        "second": "UPDATE t\nSET x = 1",
    }


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("first",), r"t\.sql: missing sections \[\], unknown sections \['second'\]"),
        (("first", "second", "third"), r"missing sections \['third'\], unknown sections \[\]"),
    ],
    ids=["unknown", "missing"],
)
def test_sections_that_differ_from_the_names_declared_are_an_error(
    names: tuple[str, ...], message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        sql.parse(TEXT, "t.sql", names)


def test_a_section_named_twice_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="'first' appears twice"):
        sql.parse(TEXT + "\n-- name: first\nSELECT 2\n", "t.sql", ("first", "second"))


@pytest.mark.parametrize("loaded", [postgres.SQL, sqlite.SQL], ids=["postgres", "sqlite"])
def test_both_stores_load_a_statement_for_every_name_they_declare(loaded: NamedTuple) -> None:
    assert all(statement.strip() for statement in loaded)


@pytest.mark.parametrize("filename", ["postgres.sql", "sqlite.sql"])
def test_a_shipped_file_that_differs_from_the_declared_names_fails_to_load(filename: str) -> None:
    with pytest.raises(RuntimeError, match=rf"{filename}: missing sections \['first', 'second'\]"):
        sql.load(Two, filename)


GUARD = (
    "WHERE run_id = :run_id AND key = :step AND attempts <= :attempt\n"
    "  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')"
)


@pytest.mark.parametrize("kind", sorted(fold.STEP_STATUS, key=lambda k: k.value))
def test_every_sqlite_step_statement_sets_status_and_attempt_under_one_guard(
    kind: EventKind,
) -> None:
    """What lets a later change supersede a dispatch in a batch (``rows.row_changes``)."""
    text = getattr(sqlite.SQL, kind.value)
    statement = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    statement = statement.strip()
    assert statement.startswith("UPDATE steps SET status = ")
    assert "attempts = :attempt" in statement
    assert statement.endswith(GUARD)


def test_a_dispatch_sets_nothing_but_status_and_attempt() -> None:
    assert sqlite.SQL.step_dispatched == (
        "UPDATE steps SET status = 'queued', attempts = :attempt\n" + GUARD
    )


def _event(kind: EventKind, step: str, attempt: int = 1, run: str = "r") -> Event:
    return Event(kind, run, 0.0, step=step, attempt=attempt)


def test_a_dispatch_the_next_change_to_its_step_supersedes_is_not_applied() -> None:
    d1 = _event(EventKind.STEP_DISPATCHED, "a")
    s1 = _event(EventKind.STEP_SUCCEEDED, "a")
    other = _event(EventKind.STEP_DISPATCHED, "b")
    elsewhere = _event(EventKind.STEP_DISPATCHED, "a", run="r2")
    ended = Event(EventKind.RUN_SUCCEEDED, "r", 0.0)
    assert rows.row_changes([d1, other, elsewhere, s1, ended]) == [other, elsewhere, s1, ended]


def test_a_dispatch_stays_when_nothing_later_or_only_an_older_attempt_changes_its_step() -> None:
    retried = _event(EventKind.STEP_RETRYING, "a", 1)
    d2 = _event(EventKind.STEP_DISPATCHED, "a", 2)
    late = _event(EventKind.STEP_SUCCEEDED, "a", 1)  # a stale completion: must not apply
    assert rows.row_changes([retried, d2]) == [retried, d2]
    assert rows.row_changes([d2, late]) == [d2, late]
    d3 = _event(EventKind.STEP_DISPATCHED, "a", 3)
    started = _event(EventKind.STEP_STARTED, "a", 3)
    assert rows.row_changes([d2, d3, started]) == [started]
