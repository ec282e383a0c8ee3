"""SQLite run store: the embedded mode's source of truth.

It calls the stdlib :mod:`sqlite3` module synchronously on the event loop thread (aexec
starts no threads).  Calls stay short because writers batch: one :meth:`SqliteStore.append`
is one transaction however many events it carries.  The database runs in WAL mode with
``synchronous=NORMAL``, so readers (``aexec runs list`` in another process) never block the
writer.

The statements live in ``sql/sqlite.sql``, one named section each (as PostgreSQL's); the
schema comes from the numbered plain-SQL files in ``migrations/sqlite/``.  ``open()``
applies the missing ones in a ``BEGIN IMMEDIATE`` transaction (two processes opening the
same new file do not race) and records the schema version in ``PRAGMA user_version``;
``migrations/sqlite/schema.sql`` is the schema they add up to, for reading.

SQLite has no notifications: :meth:`SqliteStore.follow` is woken by this store's own
appends, and notices other connections' commits by polling ``PRAGMA data_version`` (one
cheap call, no read of the log unless the file changed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import unquote

from aexec.errors import ConfigError, StoreError, StoreUnavailableError
from aexec.events import Event, EventKind
from aexec.limits import Rate
from aexec.plan import Plan
from aexec.store import (
    Attempted,
    Fence,
    Opened,
    Ownership,
    RunRecord,
    SlotFree,
    SlotTake,
    StepRecord,
    WebhookDelivery,
    fold,
    sql,
)
from aexec.store import rows as shared
from aexec.store.follow import Wakeups, follow_log, wait_for_ticket
from aexec.types import RunStatus, StepStatus

log = logging.getLogger(__name__)

URL_PREFIX = "sqlite:///"
IN_MEMORY = ":memory:"
DEFAULT_TIMEOUT = 0.2  # a busy wait blocks the event loop: retry asynchronously instead
"""Seconds a writer waits for another process's write lock before failing."""
OPEN_WAIT = 30.0
"""Seconds :meth:`SqliteStore.open` keeps trying while another process holds the lock
(migrating a new file, say, when two processes start on it at once) before it fails."""
FOLLOW_POLL_INTERVAL = 0.2
"""Seconds between two looks at ``PRAGMA data_version`` by a follower."""

_MIGRATION_FILE = re.compile(r"(\d{4})_\w+\.sql")


class Queries(NamedTuple):
    """The statements of ``sql/sqlite.sql``, one per section (:mod:`aexec.store.sql`)."""

    use_wal: str
    sync_normal: str
    check_foreign_keys: str
    data_version: str
    schema_version: str
    set_schema_version: str
    insert_plan: str
    plan_exists: str
    run_exists: str
    insert_run: str
    insert_expanded_step: str
    insert_step: str
    get_run: str
    run_ids_from: str
    list_runs: str
    step_counts: str
    last_seq: str
    run_status: str
    get_steps: str
    get_plan: str
    insert_event: str
    last_insert: str
    run_owners: str
    get_events: str
    run_started: str
    run_succeeded: str
    run_failed: str
    run_cancelled: str
    step_dispatched: str
    step_started: str
    step_retrying: str
    step_waiting: str
    step_succeeded: str
    step_failed: str
    step_skipped: str
    step_cancelled: str
    claimable_runs: str
    claim_run: str
    renew_leases: str
    renew_held_leases: str
    release_runs: str
    release_run: str
    finished_runs: str
    finished_run: str
    delete_run_events: str
    delete_run_steps: str
    delete_run: str
    delete_plan_if_unused: str
    confirm_dispatch: str
    request_cancel: str
    cancel_requests: str
    delete_cancel_request: str
    insert_delivery: str
    due_deliveries: str
    lease_delivery: str
    get_delivery: str
    held_delivery: str
    settle_delivery: str
    run_deliveries: str
    next_delivery_at: str
    delete_run_deliveries: str
    get_bucket: str
    put_bucket: str
    gate_usage: str
    prune_gate: str
    put_slot: str
    drop_step_slot: str
    release_step_slots: str
    release_run_slots: str
    run_slot_steps: str
    release_slots_of_step: str
    slot_holders: str
    waits_ahead: str
    drop_stale_waits: str
    put_wait: str
    drop_step_wait: str
    release_run_waits: str


SQL = sql.load(Queries, "sqlite.sql")

ROW_CHANGES: dict[EventKind, str] = {
    kind: getattr(SQL, kind.value) for kind in (*fold.RUN_STATUS, *fold.STEP_STATUS)
}
"""The statement that applies each row-changing event: its section, named after its kind."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration file."""

    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The file's statements, one per item, in order (comment-only lines dropped)."""
        statements: list[str] = []
        buffer = ""
        for line in self.sql.splitlines(keepends=True):
            if not buffer and (not line.strip() or line.lstrip().startswith("--")):
                continue
            buffer += line
            if sqlite3.complete_statement(buffer):
                statements.append(buffer.strip())
                buffer = ""
        if buffer.strip():
            raise StoreError(f"migration {self.name}: incomplete statement at the end")
        return statements


def migrations() -> list[Migration]:
    """Every SQLite migration shipped with aexec, in order; numbers must run 1, 2, 3…"""
    folder = resources.files("aexec.store").joinpath("migrations").joinpath("sqlite")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is not None:
            text = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), entry.name, text))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StoreError(f"SQLite migrations are not numbered 1..N: {migration.name}")
    return found


def from_url(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> SqliteStore:
    """Same as :meth:`SqliteStore.from_url`."""
    return SqliteStore.from_url(url, timeout=timeout)


class SqliteStore(Opened):
    """The run store in one SQLite file (or ``":memory:"``); parent folders are created."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        open_wait: float = OPEN_WAIT,
    ) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.open_wait = open_wait
        self._conn: sqlite3.Connection | None = None
        self._wakeups = Wakeups()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> SqliteStore:
        """A store for ``sqlite:///path/to/file.db`` (relative), ``sqlite:////abs/file.db``
        (absolute) or ``sqlite:///:memory:``; other URLs are a :class:`ConfigError`."""
        if not url.startswith(URL_PREFIX):
            raise ConfigError(f"not a SQLite URL (expected sqlite:///path): {url!r}")
        if "?" in url or "#" in url:
            raise ConfigError(f"SQLite URL takes no query or fragment: {url!r}")
        path = unquote(url[len(URL_PREFIX) :])
        if not path:
            raise ConfigError(f"SQLite URL names no database file: {url!r}")
        return cls(path, timeout=timeout)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    async def open(self) -> None:
        """Connect (and migrate); while another process holds the database's lock, try
        again, without blocking the loop, for up to ``open_wait`` seconds."""
        if self._conn is not None:
            return
        deadline = time.monotonic() + self.open_wait
        pause = 0.05
        while True:
            try:
                self._conn = self._connect()
                return
            except StoreUnavailableError:
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self._wakeups.notify_all()  # followers wake up and find the store closed
        if conn is not None:
            with self._errors("close the database"):
                conn.close()

    async def create_run(self, run: RunRecord, plan: Plan, *, notify: str | None = None) -> Event:
        conn = self._connection()
        params = _creatable(run, plan)
        submitted = shared.submitted(run, plan, notify)
        with self._errors(f"create run {run.run_id!r}"), self._transaction(conn):
            self._insert_run(conn, run, plan, params)
            conn.execute(SQL.insert_event, _event_rows([submitted])[0])
            submitted.seq = conn.execute(SQL.last_insert).fetchone()[0]
        return submitted

    @staticmethod
    def _insert_run(conn: sqlite3.Connection, run: RunRecord, plan: Plan, params: str) -> None:
        """The rows of a new run (its plan once per digest, the run, its steps)."""
        if conn.execute(SQL.run_exists, (run.run_id,)).fetchone() is not None:
            raise StoreError(f"run {run.run_id!r} already exists")
        if conn.execute(SQL.plan_exists, (plan.digest,)).fetchone() is None:
            conn.execute(SQL.insert_plan, (plan.digest, plan.pipeline, plan.to_bytes()))
        conn.execute(SQL.insert_run, shared.run_columns(run, params))
        conn.executemany(
            SQL.insert_step,
            ((run.run_id, s.index, s.key, s.name, s.queue) for s in plan.steps),
        )

    async def append(
        self,
        events: Sequence[Event],
        *,
        fence: Fence | None = None,
        confirmed: Sequence[tuple[str, str, int]] = (),
        outbox: Sequence[WebhookDelivery] = (),
        created: Sequence[tuple[RunRecord, Plan]] = (),
    ) -> None:
        conn = self._connection()
        if not events and not confirmed and not outbox and not created:
            return
        creating = [(run, plan, _creatable(run, plan)) for run, plan in created]
        logged = _event_rows(events)
        updates = _row_updates(events)
        expanded = [
            (e.run_id, *row)
            for e in events
            if e.kind is EventKind.STEP_EXPANDED
            for row in fold.expansion(e)
        ]
        first = 0
        with self._errors("append events"), self._transaction(conn):
            for run, plan, params in creating:
                self._insert_run(conn, run, plan, params)
            if fence is not None and events:  # under the write lock: nobody claims a run
                # The runs created here are fenced by their new rows.
                fresh = {run.run_id for run, _, _ in creating}
                held = [(r.run_id, r.owner, r.epoch) for r, _, _ in creating]
                lost = shared.fence_lost(fence, held)
                if lost:
                    raise shared.lease_lost(lost)
                older = [r for r in dict.fromkeys(e.run_id for e in events) if r not in fresh]
                if older:
                    self._check_fence(conn, fence, older)
            try:
                conn.executemany(SQL.insert_event, logged)
            except sqlite3.IntegrityError as exc:  # events.run_id is a foreign key
                for run_id in dict.fromkeys(e.run_id for e in events):
                    if conn.execute(SQL.run_exists, (run_id,)).fetchone() is None:
                        raise StoreError(f"cannot append events: unknown run {run_id!r}") from exc
                raise
            if logged:
                # AUTOINCREMENT under our write lock: the batch got consecutive seqs.
                first = conn.execute(SQL.last_insert).fetchone()[0] - len(logged) + 1
            if expanded:
                conn.executemany(SQL.insert_expanded_step, expanded)
            for statement, rows in updates:
                conn.executemany(statement, rows)
            if confirmed:
                conn.executemany(
                    SQL.confirm_dispatch,
                    ({"run_id": r, "key": k, "attempt": a} for r, k, a in confirmed),
                )
            if outbox:
                _insert_deliveries(conn, outbox)
        for i, event in enumerate(events):
            event.seq = first + i
        for run_id in dict.fromkeys(e.run_id for e in events):
            self._wakeups.notify(run_id)

    async def fail_run(
        self,
        run_id: str,
        error: str,
        *,
        ts: float,
        fence: Fence | None = None,
        outbox: Sequence[WebhookDelivery] = (),
    ) -> Event | None:
        conn = self._connection()
        event = shared.failed_event(run_id, error, ts)
        with self._errors(f"fail run {run_id!r}"), self._transaction(conn):
            rows = self._owners(conn, [run_id])
            if not rows:
                raise StoreError(f"cannot fail run {run_id!r}: no such run")
            if fence is not None:
                lost = shared.fence_lost(fence, [row[:3] for row in rows])
                if lost:
                    raise shared.lease_lost(lost)
            if RunStatus(rows[0][3]).finished:
                return None
            conn.execute(SQL.insert_event, _event_rows([event])[0])
            event.seq = conn.execute(SQL.last_insert).fetchone()[0]
            conn.execute(SQL.run_failed, _row_params(event))
            _insert_deliveries(conn, outbox)
        self._wakeups.notify(run_id)
        return event

    def _check_fence(self, conn: sqlite3.Connection, fence: Fence, run_ids: Iterable[str]) -> None:
        lost = shared.fence_lost(fence, [row[:3] for row in self._owners(conn, run_ids)])
        if lost:
            raise shared.lease_lost(lost)

    @staticmethod
    def _owners(conn: sqlite3.Connection, run_ids: Iterable[str]) -> list[Any]:
        """``run_id, owner, epoch, status, lease_until`` of those runs that exist."""
        return conn.execute(SQL.run_owners, (json.dumps(list(run_ids)),)).fetchall()

    async def get_run(self, run_id: str) -> RunRecord | None:
        conn = self._connection()
        with self._errors(f"read run {run_id!r}"):
            row = conn.execute(SQL.get_run, (run_id,)).fetchone()
            if row is None and len(run_id) >= 4:
                following = conn.execute(SQL.run_ids_from, (run_id,)).fetchall()
                matches = [rid for (rid,) in following if rid.startswith(run_id)]
                if len(matches) > 1:
                    raise StoreError(f"run id prefix {run_id!r} is ambiguous")
                if matches:
                    row = conn.execute(SQL.get_run, (matches[0],)).fetchone()
        return None if row is None else shared.run_record(row)

    async def list_runs(
        self,
        *,
        limit: int = 50,
        status: RunStatus | None = None,
        pipeline: str | None = None,
        tag: tuple[str, str] | None = None,
        offset: int = 0,
    ) -> list[RunRecord]:
        conn = self._connection()
        shared.check_limit(limit)
        shared.check_offset(offset)
        wanted = None if status is None else status.value
        with self._errors("list runs"):
            key, value = tag if tag is not None else (None, None)
            rows = conn.execute(
                SQL.list_runs, (wanted, pipeline, limit, offset, key, value)
            ).fetchall()
        return [shared.run_record(row) for row in rows]

    async def step_counts(self, run_ids: Iterable[str]) -> dict[str, dict[StepStatus, int]]:
        conn = self._connection()
        ids = json.dumps(list(run_ids))
        with self._errors("count the steps of runs"):
            rows = conn.execute(SQL.step_counts, (ids,)).fetchall()
        return shared.step_counts(rows)

    async def last_seq(self, run_id: str) -> int:
        conn = self._connection()
        with self._errors(f"read the last event of run {run_id!r}"):
            row = conn.execute(SQL.last_seq, (run_id,)).fetchone()
        return int(row[0])

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        conn = self._connection()
        with self._errors(f"read the steps of run {run_id!r}"):
            rows = conn.execute(SQL.get_steps, (run_id,)).fetchall()
        return [shared.step_record(row) for row in rows]

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        conn = self._connection()
        if limit is not None:
            shared.check_limit(limit)
        with self._errors(f"read the events of run {run_id!r}"):
            rows = conn.execute(SQL.get_events, (run_id, after, -1 if limit is None else limit))
            return [shared.event(row) for row in rows]

    async def get_plan(self, digest: str) -> Plan | None:
        conn = self._connection()
        with self._errors(f"read plan {digest!r}"):
            row = conn.execute(SQL.get_plan, (digest,)).fetchone()
        return None if row is None else Plan.from_bytes(row[0])

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        async def read(last: int) -> list[Event]:
            return await self.get_events(run_id, after=last)

        async def finished() -> bool:
            conn = self._connection()
            with self._errors(f"read run {run_id!r}"):
                row = conn.execute(SQL.run_status, (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"cannot follow run {run_id!r}: no such run")
            return RunStatus(row[0]).finished

        async for event in follow_log(_SqliteWatch(self, run_id), read, finished, after=after):
            yield event

    # -- leases -----------------------------------------------------------------------------

    async def acquire_runs(self, owner: str, lease: float, *, limit: int = 100) -> list[RunRecord]:
        conn = self._connection()
        shared.check_lease(lease)
        shared.check_limit(limit)
        with self._errors("acquire runs"), self._transaction(conn):
            now = time.time()  # read under the write lock: no other claim is in between
            rows = conn.execute(SQL.claimable_runs, (now, limit))
            claimed = [shared.run_record(row) for row in rows]
            for run in claimed:
                run.owner, run.lease_until = owner, now + lease
                run.epoch += 1
            conn.executemany(SQL.claim_run, ((owner, now + lease, r.run_id) for r in claimed))
        return claimed

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        conn = self._connection()
        shared.check_lease(lease)
        with self._errors("renew leases"), self._transaction(conn):
            until = time.time() + lease
            if held is None:
                rows = conn.execute(SQL.renew_leases, (until, owner)).fetchall()
            else:
                params = {"until": until, "owner": owner, "held": json.dumps(dict(held))}
                rows = conn.execute(SQL.renew_held_leases, params).fetchall()
        return {run_id for (run_id,) in rows}

    async def owners(self, run_ids: Iterable[str]) -> dict[str, Ownership]:
        conn = self._connection()
        with self._errors("read the owners of runs"):
            rows = self._owners(conn, dict.fromkeys(run_ids))
        now = time.time()
        return {
            run_id: Ownership(
                run_id, RunStatus(status), owner, epoch, until is not None and until >= now
            )
            for run_id, owner, epoch, status, until in rows
        }

    async def release_runs(self, owner: str, run_ids: Iterable[str] | None = None) -> None:
        conn = self._connection()
        with self._errors("release runs"), self._transaction(conn):
            if run_ids is None:
                conn.execute(SQL.release_runs, (owner,))
            else:
                conn.executemany(SQL.release_run, ((owner, run_id) for run_id in run_ids))

    # -- cancel requests --------------------------------------------------------------------

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        conn = self._connection()
        with self._errors(f"record a cancel request for run {run_id!r}"), self._transaction(conn):
            conn.execute(SQL.request_cancel, (run_id, reason, time.time()))

    async def cancel_requests(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        conn = self._connection()
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        with self._errors("read cancel requests"):
            rows = conn.execute(SQL.cancel_requests, (json.dumps(wanted),)).fetchall()
        return {run_id: reason for run_id, reason in rows}

    # -- retention --------------------------------------------------------------------------

    async def finished_runs(
        self, before: float, *, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        conn = self._connection()
        shared.check_limit(limit)
        after_ts, after_id = after or (-math.inf, "")
        params = {"before": before, "after_ts": after_ts, "after_id": after_id, "limit": limit}
        with self._errors("list finished runs"):
            rows = conn.execute(SQL.finished_runs, params).fetchall()
        return [shared.run_record(row) for row in rows]

    async def take_tokens(self, bucket: str, rate: Rate, want: int) -> tuple[int, float]:
        conn = self._connection()
        with self._errors("take tokens"), self._transaction(conn):
            row = conn.execute(SQL.get_bucket, (bucket,)).fetchone()
            now = time.time()
            stored = None if row is None else (float(row[0]), float(row[1]))
            tokens, granted, retry_in = shared.take_from_bucket(stored, now, rate, want)
            conn.execute(SQL.put_bucket, (bucket, tokens, now))
        return granted, retry_in

    async def sync_slots(self, frees: Sequence[SlotFree], takes: Sequence[SlotTake]) -> list[bool]:
        conn = self._connection()
        with self._errors("take and free limit slots"), self._transaction(conn):
            for free in frees:
                if free.step is None:
                    conn.execute(SQL.release_run_slots, (free.run_id,))
                    conn.execute(SQL.release_run_waits, (free.run_id,))
                else:
                    conn.execute(SQL.release_step_slots, (free.run_id, free.step, free.attempt))
            now = time.time()
            return [self._take_slots(conn, take, now) for take in takes]

    @staticmethod
    def _take_slots(conn: sqlite3.Connection, take: SlotTake, now: float) -> bool:
        holder = {"run_id": take.run_id, "step": take.step, "attempt": take.attempt}
        fresh = now - shared.SLOT_WAIT_TTL
        needed: list[str] = []
        for gate, capacity in take.caps:
            used, held = conn.execute(SQL.gate_usage, {"gate": gate, **holder}).fetchone()
            if not held:
                ahead = conn.execute(
                    SQL.waits_ahead,
                    {"gate": gate, "run_id": take.run_id, "step": take.step, "now": now,
                     "fresh": fresh},
                ).fetchone()[0]  # fmt: skip
                if used + ahead >= capacity and used >= capacity:
                    conn.execute(SQL.prune_gate, {"gate": gate})
                    used, _ = conn.execute(SQL.gate_usage, {"gate": gate, **holder}).fetchone()
                if used + ahead >= capacity:  # full, or the free slots are others' turn
                    conn.execute(SQL.drop_stale_waits, (gate, fresh))
                    conn.execute(SQL.put_wait, (gate, take.run_id, take.step, now, now))
                    return False
            needed.append(gate)
        for gate in needed:
            conn.execute(SQL.drop_step_wait, (gate, take.run_id, take.step))
            conn.execute(SQL.drop_step_slot, {"gate": gate, **holder})
            conn.execute(SQL.put_slot, {"gate": gate, "now": now, **holder})
        return True

    async def keep_slots(self, run_id: str, steps: Iterable[str]) -> list[str]:
        conn = self._connection()
        keep = set(steps)
        with self._errors("release limit slots"), self._transaction(conn):
            held = [row[0] for row in conn.execute(SQL.run_slot_steps, (run_id,)).fetchall()]
            for step in held:
                if step not in keep:
                    conn.execute(SQL.release_slots_of_step, (run_id, step))
        return sorted(step for step in held if step in keep)

    async def slot_holders(self, gate: str) -> list[tuple[str, str, int]]:
        conn = self._connection()
        with self._errors("read limit slots"):
            rows = conn.execute(SQL.slot_holders, (gate,)).fetchall()
        return [(row[0], row[1], int(row[2])) for row in rows]

    async def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        conn = self._connection()
        deleted: list[str] = []
        digests: set[str] = set()
        with self._errors("delete runs"), self._transaction(conn):
            for run_id in dict.fromkeys(run_ids):
                row = conn.execute(SQL.finished_run, (run_id,)).fetchone()
                if row is None:
                    continue
                conn.execute(SQL.delete_run_deliveries, (run_id,))
                conn.execute(SQL.delete_run_events, (run_id,))
                conn.execute(SQL.delete_run_steps, (run_id,))
                conn.execute(SQL.delete_run, (run_id,))
                conn.execute(SQL.delete_cancel_request, (run_id,))
                deleted.append(run_id)
                digests.add(row[0])
            for digest in sorted(digests):
                conn.execute(SQL.delete_plan_if_unused, (digest,))
        return deleted

    async def claim_deliveries(
        self, owner: str, lease: float, *, now: float, limit: int = 20
    ) -> list[WebhookDelivery]:
        shared.check_limit(limit)
        shared.check_lease(lease)
        conn = self._connection()
        with self._errors("claim webhook deliveries"), self._transaction(conn):
            ids = [row[0] for row in conn.execute(SQL.due_deliveries, (now, limit))]
            conn.executemany(SQL.lease_delivery, ((owner, now + lease, id_) for id_ in ids))
            rows = [conn.execute(SQL.get_delivery, (id_,)).fetchone() for id_ in ids]
        return [shared.delivery_record(row) for row in rows]

    async def settle_delivery(self, delivery_id: str, owner: str, outcome: Attempted) -> bool:
        conn = self._connection()
        with self._errors("record a webhook delivery"), self._transaction(conn):
            row = conn.execute(SQL.held_delivery, (delivery_id, owner)).fetchone()
            if row is None:
                return False
            after = shared.attempted(shared.delivery_record(row), outcome)
            conn.execute(SQL.settle_delivery, _settled(after))
        return True

    async def get_deliveries(self, run_id: str) -> list[WebhookDelivery]:
        conn = self._connection()
        with self._errors(f"read the deliveries of run {run_id!r}"):
            rows = conn.execute(SQL.run_deliveries, (run_id,)).fetchall()
        return [shared.delivery_record(row) for row in rows]

    async def next_delivery_at(self) -> float | None:
        conn = self._connection()
        with self._errors("read the next delivery"):
            found: float | None = conn.execute(SQL.next_delivery_at).fetchone()[0]
        return found

    # -- plumbing ---------------------------------------------------------------------------

    def _data_version(self) -> int:
        """Changes when another connection commits to the file (not when this one does)."""
        conn = self._connection()
        with self._errors("poll the database"):
            version: int = conn.execute(SQL.data_version).fetchone()[0]
        return version

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self!r} is not open")
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        if self.path != IN_MEMORY:
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of {self.path!r}: {exc}") from exc
        with self._errors("open the database"):
            # isolation_level=None: no implicit transactions; this module issues BEGIN itself.
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                conn.execute(SQL.use_wal)
                conn.execute(SQL.sync_normal)
                conn.execute(SQL.check_foreign_keys)
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        available = migrations()
        if self._schema_version(conn, len(available)) == len(available):
            return  # up to date: no write lock needed, so readers open while a writer works
        with self._transaction(conn):
            current = self._schema_version(conn, len(available))  # again, under the lock
            for migration in available[current:]:
                log.info("applying migration %s to %s", migration.name, self.path)
                for statement in migration.statements():
                    conn.execute(statement)
                conn.execute(SQL.set_schema_version.format(version=migration.version))

    def _schema_version(self, conn: sqlite3.Connection, supported: int) -> int:
        version: int = conn.execute(SQL.schema_version).fetchone()[0]
        if version > supported:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this aexec "
                f"supports ({supported}); upgrade aexec"
            )
        return version

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            message = " ".join(str(exc).split())
            transient = isinstance(exc, sqlite3.OperationalError) and (
                "locked" in message or "busy" in message
            )
            error = StoreUnavailableError if transient else StoreError
            raise error(f"SQLite store {self.path}: cannot {action}: {message}") from exc

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise


def _insert_deliveries(conn: sqlite3.Connection, outbox: Sequence[WebhookDelivery]) -> None:
    try:
        conn.executemany(
            SQL.insert_delivery,
            [(d.id, d.run_id, d.url, d.event, d.body, d.created_at, d.next_at) for d in outbox],
        )
    except sqlite3.IntegrityError as exc:  # webhooks.run_id is a foreign key
        raise StoreError("cannot add a webhook delivery: unknown run") from exc


def _settled(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "next_at": delivery.next_at,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "finished_at": delivery.finished_at,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
    }


def _row_updates(events: Sequence[Event]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The batch's row changes as ``(statement, parameter rows)`` pairs for ``executemany``,
    in an order with the same effect as applying the events one by one: without the
    dispatches a later change supersedes (:func:`~aexec.store.rows.row_changes`), round by
    round (:func:`~aexec.store.rows.change_rounds`), grouped by statement within a round, so
    a batch that touches each step once costs one ``executemany`` per event kind.
    """
    updates: list[tuple[str, list[dict[str, Any]]]] = []
    for changes in shared.change_rounds(shared.row_changes(events)):
        by_statement: dict[str, list[dict[str, Any]]] = {}
        for event in changes:
            by_statement.setdefault(ROW_CHANGES[event.kind], []).append(_row_params(event))
        updates.extend(by_statement.items())
    return updates


def _row_params(event: Event) -> dict[str, Any]:
    worker, error, failure = shared.change_data(event)
    return {
        "failure": failure,
        "run_id": event.run_id,
        "step": event.step,
        "attempt": event.attempt,
        "ts": event.ts,
        "output": event.output,
        "worker": worker,
        "error": error,
    }


def _creatable(run: RunRecord, plan: Plan) -> str:
    """The params of a run to create, as stored; a StoreError if it names another plan."""
    if run.plan_digest != plan.digest:
        raise StoreError(f"run {run.run_id!r} names plan {run.plan_digest!r}, not the plan given")
    return shared.dump_json(run.params, "run params")


def _event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """The ``insert_event`` parameters: run_id, ts, kind, step, attempt, data."""
    return [
        (e.run_id, e.ts, e.kind.value, e.step, e.attempt, _dump_data(e) if e.data else None)
        for e in events
    ]


def _dump_data(event: Event) -> str:
    return shared.dump_json(event.data, f"{event.kind} event data")


class _SqliteWatch:
    """Woken by this store's appends; notices other connections' commits by polling."""

    def __init__(self, store: SqliteStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._ticket = asyncio.Event()  # armed before each read
        self._version = 0

    def arm(self) -> None:
        self._ticket = self._store._wakeups.ticket(self._run_id)
        self._version = self._store._data_version()

    async def wait(self) -> None:
        while not await wait_for_ticket(self._ticket, FOLLOW_POLL_INTERVAL):
            if self._store._data_version() != self._version:
                return
