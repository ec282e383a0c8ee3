"""Helpers every store adapter shares: row values to and from their stored forms."""

from __future__ import annotations

import json
from typing import Any

from aexec.errors import StoreError
from aexec.types import ErrorInfo


def error_info(value: Any) -> ErrorInfo | None:
    """A step event's ``data["error"]``: ``ErrorInfo.to_dict()``, or a bare message."""
    if value is None:
        return None
    if isinstance(value, dict):
        return ErrorInfo.from_dict(value)
    return ErrorInfo("Error", str(value))


def text(value: Any) -> str | None:
    return None if value is None else str(value)


def dump_json(value: dict[str, Any], what: str) -> str:
    """JSON text of ``value``; values JSON has no type for (datetime, bytes, sets, the
    codec's other extensions) are kept as their ``str()``: rows and the log are for reading,
    and a value that can never be stored must not stall a writer that retries."""
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError) as exc:  # keys JSON cannot hold, or a reference cycle
        raise StoreError(f"{what} cannot be stored as JSON: {exc}") from exc


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
