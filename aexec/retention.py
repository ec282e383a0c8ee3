"""Retention: delete old finished runs with everything they left behind (``aexec runs prune``).

A run finished (succeeded, failed or cancelled) before a cutoff goes with its objects (every
object under :func:`~aexec.objects.run_prefix`: large outputs, spilled inputs) and then its
rows (run, steps, events; its plan when no other run uses it).  Objects go first: a run
whose objects could not be deleted keeps its rows, so a later prune finds it again, and no
object is ever left behind without a row naming its run.  An unfinished run is never
touched: the store deletes only runs that are finished when it deletes them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from aexec.errors import ConfigError, ObjectStoreError, StoreError
from aexec.objects import ObjectStore, run_prefix
from aexec.store import RunRecord, Store

log = logging.getLogger(__name__)

BATCH = 200
"""Runs looked up and deleted per store call."""

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s`` (or ``2w``); ConfigError otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"invalid duration {text!r}: a number and a unit, as in 30d, 12h, 90m or 45s"
        )
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclass(frozen=True, slots=True)
class Pruned:
    """One run a prune deleted (or, in a dry run, would delete): ``objects`` it deleted
    (None in a dry run), or the ``error`` that kept it."""

    run: RunRecord
    deleted: bool
    objects: int | None = None
    error: str | None = None


async def prune(
    store: Store,
    objects: ObjectStore,
    *,
    finished_before: float,
    dry_run: bool = False,
) -> list[Pruned]:
    """Delete every run that finished before ``finished_before`` (seconds since the epoch)
    with its objects and rows, the longest finished first; with ``dry_run``, only say
    which runs that would be."""
    done: list[Pruned] = []
    after: tuple[float, str] | None = None
    while batch := await store.finished_runs(finished_before, limit=BATCH, after=after):
        last = batch[-1]
        after = (last.finished_at or 0.0, last.run_id)
        if dry_run:
            done += [Pruned(run, deleted=False) for run in batch]
            continue
        counted: dict[str, int] = {}
        for run in batch:
            try:
                counted[run.run_id] = await objects.delete_prefix(run_prefix(run.run_id))
            except ObjectStoreError as exc:
                log.warning("cannot delete the objects of run %s: %s", run.run_id, exc)
                done.append(Pruned(run, deleted=False, error=str(exc)))
        try:
            deleted = set(await store.delete_runs(counted))
        except StoreError as exc:
            done += [Pruned(run, False, error=str(exc)) for run in batch if run.run_id in counted]
            return done  # the next prune finds these again
        done += [
            Pruned(run, deleted=True, objects=counted[run.run_id])
            for run in batch
            if run.run_id in deleted
        ]
    return done


def cutoff(older_than: float, now: float | None = None) -> float:
    """The ``finished_before`` of runs older than ``older_than`` seconds."""
    return (time.time() if now is None else now) - older_than


__all__ = ["BATCH", "Pruned", "cutoff", "parse_duration", "prune"]
