"""The SQL stores' statements: one file per database in this folder (``sqlite.sql``,
``postgres.sql``), one named section per statement.

A section starts with a line ``-- name: <identifier>`` and runs to the next one; comments
inside it stay in the statement.  Each adapter declares its statements as the fields of a
``NamedTuple`` and loads its file once, at import, with :func:`load`: a section missing
from the file, or one the adapter does not declare, fails the import.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import NamedTuple, TypeVar

Q = TypeVar("Q", bound=NamedTuple)

_SECTION = re.compile(r"--\s*name:\s*(\w+)\s*")


def load(queries: type[Q], filename: str) -> Q:
    """The sections of ``filename`` (in this folder) as a ``queries`` tuple, one field per
    section; a RuntimeError if the names differ."""
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    sections = parse(text, filename, queries._fields)
    return queries._make(sections[name] for name in queries._fields)


def parse(text: str, source: str, names: tuple[str, ...]) -> dict[str, str]:
    """``{name: statement}`` of the sections of ``text``, which must be exactly ``names``
    (``source`` names the text in the error)."""
    sections: dict[str, list[str]] = {}
    lines: list[str] | None = None
    for line in text.splitlines():
        match = _SECTION.fullmatch(line)
        if match is not None:
            name = match.group(1)
            if name in sections:
                raise RuntimeError(f"{source}: section {name!r} appears twice")
            lines = sections[name] = []
        elif lines is not None:
            lines.append(line)
    found, wanted = set(sections), set(names)
    if found != wanted:
        missing, unknown = sorted(wanted - found), sorted(found - wanted)
        raise RuntimeError(f"{source}: missing sections {missing}, unknown sections {unknown}")
    return {name: "\n".join(body).strip() for name, body in sections.items()}
