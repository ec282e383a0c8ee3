"""The SQL files' named sections (``aexec.store.sql``): one parser for both stores, and a
file whose sections differ from what its store declares fails loudly."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from aexec.store import postgres, sql, sqlite

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
