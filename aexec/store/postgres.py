"""PostgreSQL run store: the distributed mode's source of truth, over an asyncpg pool.

Same semantics as the SQLite store (both pass ``tests/contract/test_store.py``).  The
statements live in ``sql/postgres.sql``, one named section each; the schema comes from the
numbered files in ``migrations/postgres/``, which :meth:`PostgresStore.open` applies in one
transaction under an advisory lock and records in ``aexec_migrations``
(``migrations/postgres/schema.sql`` is what they add up to, for reading).

Every call runs under ``timeout`` seconds, pool acquisition included: a dead connection can
leave asyncpg waiting forever.  Failures that say the database cannot be reached now
(connection lost or refused, timeouts, too many connections, server shutting down,
deadlock or serialization failure) raise :class:`~aexec.errors.StoreUnavailableError`,
which callers retry; other database errors raise :class:`~aexec.errors.StoreError`.  A
connection whose call failed that way is closed, never reused.  Messages name the database
as ``user@host:port/db``, never with a password.

:meth:`PostgresStore.append` is one transaction of a handful of statements however many
events it carries (the changes go in as arrays), and sends ``pg_notify('aexec_events',
run_id)`` once per run; :meth:`PostgresStore.follow` listens on a connection of its own and
re-reads the log on each wake-up, and at least every ``FOLLOW_FALLBACK`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import asyncpg

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

URL_SCHEMES = ("postgresql", "postgres")
DEFAULT_TIMEOUT = 10.0
"""Seconds any one store call may take, waiting for a pool connection included."""
FOLLOW_FALLBACK = 1.0
"""Seconds after which a follower re-reads the log even without a notification."""
CHANNEL = "aexec_events"
"""The ``LISTEN``/``NOTIFY`` channel: its payload is the id of a run that has new events."""
MIGRATION_TIMEOUT = 300.0
"""Seconds :meth:`PostgresStore.open` may spend migrating (or waiting for another store
that migrates the same database)."""
MIGRATION_LOCK = 0x6165786563
"""The ``pg_advisory_xact_lock`` key held while migrating ("aexec" in ASCII)."""

_MIGRATION_FILE = re.compile(r"(\d{4})_\w+\.sql")

# Failures that say "not now" rather than "never": the caller retries them.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError and SQLSTATE class 08
    asyncpg.InterfaceError,  # e.g. "connection is closed"
    asyncpg.InternalClientError,  # a broken protocol stream
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    OSError,  # refused, reset, unreachable
    TimeoutError,
)
# Failures that say the connection was dead when used (not that the database is down).
_LOST: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    ConnectionResetError,
    BrokenPipeError,
)
T = TypeVar("T")


class Queries(NamedTuple):
    """The statements of ``sql/postgres.sql``, one per section (:mod:`aexec.store.sql`)."""

    lock_migrations: str
    create_migrations_table: str
    applied_migrations: str
    record_migration: str
    insert_plan: str
    insert_run: str
    insert_steps: str
    insert_expanded_steps: str
    get_run: str
    run_ids_from: str
    list_runs: str
    step_counts: str
    last_seq: str
    run_status: str
    get_steps: str
    get_plan: str
    lock_runs: str
    insert_events: str
    update_steps: str
    update_runs: str
    get_events: str
    acquire_runs: str
    renew_leases: str
    renew_held_leases: str
    run_owners: str
    release_runs: str
    finished_runs: str
    lock_finished_runs: str
    delete_events_of_runs: str
    delete_steps_of_runs: str
    delete_runs: str
    delete_unused_plans: str
    confirm_dispatches: str
    current_transaction: str
    transaction_status: str
    end_backend: str
    request_cancel: str
    cancel_requests: str
    delete_cancel_requests: str
    insert_deliveries: str
    claim_deliveries: str
    held_delivery: str
    settle_delivery: str
    run_deliveries: str
    next_delivery_at: str
    delete_deliveries_of_runs: str
    create_bucket: str
    lock_bucket: str
    put_bucket: str
    lock_gate: str
    gate_usage: str
    prune_gate: str
    put_slots: str
    release_steps_slots: str
    release_runs_slots: str
    release_runs_waits: str
    prune_run_slots: str
    run_slot_steps: str
    slot_holders: str
    clock: str
    put_wait: str


SQL = sql.load(Queries, "postgres.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration file, run as one script."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every PostgreSQL migration shipped with aexec, in order; numbers must run 1, 2, 3…"""
    folder = resources.files("aexec.store").joinpath("migrations").joinpath("postgres")
    found = [
        Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if (match := _MIGRATION_FILE.fullmatch(entry.name)) is not None
    ]
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise StoreError(f"PostgreSQL migrations are not numbered 1..N: {migration.name}")
    return found


def from_url(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> PostgresStore:
    """Same as :meth:`PostgresStore.from_url`."""
    return PostgresStore.from_url(url, timeout=timeout)


def display_dsn(dsn: str) -> str:
    """``user@host:port/db`` of a DSN: no password, no query (which may hold one)."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable DSN>"
    user = f"{parts.username}@" if parts.username else ""
    return f"{user}{host}{port}{parts.path}"


class PostgresStore(Opened):
    """The run store in a PostgreSQL database, through a pool of ``min_size``..``max_size``
    connections, plus one that ``LISTEN``s from the first :meth:`follow` until :meth:`close`."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._name = display_dsn(dsn)
        self._pool: Any = None  # asyncpg.Pool once open
        self._listener: Any = None  # the LISTEN connection, opened by the first follower
        self._listener_lock = asyncio.Lock()
        self._listen_failed = False  # warn once per outage of the LISTEN connection
        self._wakeups = Wakeups()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> PostgresStore:
        """A store for ``postgresql://user[:password]@host[:port]/db[?options]`` (or
        ``postgres://``); the URL goes to asyncpg as it is.  Other URLs are a
        :class:`ConfigError`."""
        scheme = url.split(":", 1)[0]
        if scheme not in URL_SCHEMES or not url.startswith(f"{scheme}://"):
            raise ConfigError(f"not a PostgreSQL URL (expected postgresql://...): {scheme}:...")
        try:
            urlsplit(url).port  # noqa: B018 - parses the host and port
        except ValueError as exc:
            raise ConfigError(f"invalid PostgreSQL URL: {exc}") from None
        return cls(url, timeout=timeout)

    def __repr__(self) -> str:
        return f"PostgresStore({self._name!r})"

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.timeout,  # to connect
                    reset=_keep_session,
                )
        except Exception as exc:
            raise self._error("connect", exc) from exc
        self._pool = pool
        try:
            await self._migrate()
        except BaseException:
            self._pool = None
            pool.terminate()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        self._wakeups.notify_all()  # followers wake up and find the store closed
        if listener is not None:
            listener.terminate()
        if pool is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except Exception:  # a connection that cannot close politely: the database is gone
                pool.terminate()
            except BaseException:
                pool.terminate()
                raise

    # -- runs -------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord, plan: Plan, *, notify: str | None = None) -> Event:
        self._check_open()
        columns = _creatable(run, plan)
        submitted = shared.submitted(run, plan, notify)
        async with self._transaction(f"create run {run.run_id!r}") as conn:
            await self._insert_run(conn, run, plan, columns)
            submitted.seq = await conn.fetchval(SQL.insert_events, *_event_columns([submitted]))
        return submitted

    async def _insert_run(self, conn: Any, run: RunRecord, plan: Plan, columns: list[Any]) -> None:
        """The rows of a new run (its plan once per digest, the run, its steps)."""
        steps = plan.steps
        await conn.execute(SQL.insert_plan, plan.digest, _text(plan.pipeline), plan.to_bytes())
        try:
            created = await conn.fetchval(SQL.insert_run, *columns)
        except asyncpg.ForeignKeyViolationError as exc:
            # The plan was there a statement ago: a prune deleted it (no run used it).
            raise StoreUnavailableError(
                f"PostgreSQL store {self._name}: cannot create run {run.run_id!r}: its "
                "plan was deleted meanwhile by a prune (try again)"
            ) from exc
        if created is None:
            raise StoreError(f"run {run.run_id!r} already exists")
        await conn.execute(
            SQL.insert_steps,
            _text(run.run_id),
            [s.index for s in steps],
            [_text(s.key) for s in steps],
            [_text(s.name) for s in steps],
            [_text(s.queue) for s in steps],
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
        self._check_open()
        if not events and not confirmed and not outbox and not created:
            return
        creating = [(run, plan, _creatable(run, plan)) for run, plan in created]
        logged = _event_columns(events)
        rounds = [_round_columns(changes) for changes in shared.change_rounds(events)]
        # The runs created here are this transaction's own: fenced by their new rows, not
        # locked (nobody else sees them before the commit).
        fresh = {run.run_id for run, _ in created}
        if fence is not None and created:
            lost = shared.fence_lost(fence, [(r.run_id, r.owner, r.epoch) for r, _ in created])
            if lost:
                raise shared.lease_lost(lost)
        run_ids = sorted(({e.run_id for e in events} | {d.run_id for d in outbox}) - fresh)
        seqs: list[int] = []
        commit = _Commit()
        try:
            async with self._transaction("append events", commit=commit) as conn:
                commit.begun(await conn.fetchval(SQL.current_transaction), conn)
                for run, plan, columns in creating:
                    await self._insert_run(conn, run, plan, columns)
                seqs = await self._append(conn, events, run_ids, fence, logged, rounds, confirmed)
                if outbox:
                    await conn.execute(SQL.insert_deliveries, *_delivery_columns(outbox))
        except StoreUnavailableError as exc:
            # The connection failed during COMMIT: the batch may be in the store.  Retrying a
            # batch that is would record every event of it twice, so find out.
            if not commit.committing or not await self._committed(commit):
                raise
            log.warning("%s: committed all the same, as the database tells", exc)
        for event, seq in zip(events, seqs, strict=True):
            event.seq = seq

    async def _append(
        self,
        conn: Any,
        events: Sequence[Event],
        run_ids: list[str],
        fence: Fence | None,
        logged: list[list[Any]],
        rounds: list[tuple[list[list[Any]], list[list[Any]]]],
        confirmed: Sequence[tuple[str, str, int]],
    ) -> list[int]:
        """The statements of :meth:`append`, on ``conn`` in its transaction; the seqs."""
        seqs: list[int] = []
        if events:
            if run_ids:
                await self._lock_runs(conn, run_ids, fence)
            seqs = [row[0] for row in await conn.fetch(SQL.insert_events, *logged)]
        for event in events:
            if event.kind is EventKind.STEP_EXPANDED:  # the steps of a map, before their changes
                rows = fold.expansion(event)
                columns = [list(column) for column in zip(*rows, strict=True)] or [[]] * 4
                await conn.execute(SQL.insert_expanded_steps, event.run_id, *columns)
        for step_columns, run_columns in rounds:
            if step_columns[0]:
                await conn.execute(SQL.update_steps, *step_columns)
            if run_columns[0]:
                await conn.execute(SQL.update_runs, *run_columns)
        if confirmed:
            sent = sorted(confirmed)
            await conn.execute(
                SQL.confirm_dispatches,
                [c[0] for c in sent],
                [_text(c[1]) for c in sent],
                [c[2] for c in sent],
            )
        return seqs

    async def _committed(self, commit: _Commit) -> bool:
        """Did the transaction of ``commit``, whose connection failed during COMMIT, commit?
        Its server process is ended first (a stalled link could still deliver the COMMIT
        later), then the server's record of the transaction tells.  While the database
        cannot be asked, it asks again (backing off): guessing could record a batch twice."""
        delay = 0.05
        while True:
            try:
                async with self._connection("check a commit") as conn:
                    await conn.fetchval(SQL.end_backend, commit.pid)
                    status = await conn.fetchval(SQL.transaction_status, commit.xid)
                if status != "in progress":
                    return bool(status == "committed")
            except StoreUnavailableError as exc:
                log.warning("cannot tell whether a batch committed yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def fail_run(
        self,
        run_id: str,
        error: str,
        *,
        ts: float,
        fence: Fence | None = None,
        outbox: Sequence[WebhookDelivery] = (),
    ) -> Event | None:
        self._check_open()
        event = shared.failed_event(run_id, error, ts)
        async with self._transaction(f"fail run {run_id!r}") as conn:
            (row,) = await self._lock_runs(conn, [run_id], fence)
            if RunStatus(row[3]).finished:
                return None
            event.seq = await conn.fetchval(SQL.insert_events, *_event_columns([event]))
            _, run_columns = _round_columns([event])
            await conn.execute(SQL.update_runs, *run_columns)
            if outbox:
                await conn.execute(SQL.insert_deliveries, *_delivery_columns(outbox))
        return event

    async def _lock_runs(self, conn: Any, run_ids: list[str], fence: Fence | None) -> list[Any]:
        """Lock the runs of a write (``run_ids``, sorted) and return their ``run_id, owner,
        epoch, status``; a StoreError for an unknown run, a LeaseLostError for a run the
        ``fence`` does not hold any more."""
        rows: list[Any] = await conn.fetch(SQL.lock_runs, run_ids)
        if len(rows) < len(run_ids):
            found = {row[0] for row in rows}
            unknown = next(run_id for run_id in run_ids if run_id not in found)
            raise StoreError(f"cannot append events: unknown run {unknown!r}")
        if fence is not None:
            lost = shared.fence_lost(fence, [(row[0], row[1], row[2]) for row in rows])
            if lost:
                raise shared.lease_lost(lost)
        return rows

    async def get_run(self, run_id: str) -> RunRecord | None:
        async def lookup(conn: Any) -> Any:
            row = await conn.fetchrow(SQL.get_run, run_id)
            if row is None and len(run_id) >= 4:
                following = await conn.fetch(SQL.run_ids_from, run_id)
                matches = [r[0] for r in following if r[0].startswith(run_id)]
                if len(matches) > 1:
                    raise StoreError(f"run id prefix {run_id!r} is ambiguous")
                if matches:
                    row = await conn.fetchrow(SQL.get_run, matches[0])
            return row

        row = await self._read(f"read run {run_id!r}", lookup)
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
        shared.check_limit(limit)
        shared.check_offset(offset)
        wanted = None if status is None else status.value
        tagged = None if tag is None else json.dumps({tag[0]: tag[1]})
        rows = await self._read(
            "list runs",
            lambda conn: conn.fetch(SQL.list_runs, wanted, pipeline, limit, offset, tagged),
        )
        return [shared.run_record(row) for row in rows]

    async def step_counts(self, run_ids: Iterable[str]) -> dict[str, dict[StepStatus, int]]:
        ids = list(run_ids)
        rows = await self._read(
            "count the steps of runs", lambda conn: conn.fetch(SQL.step_counts, ids)
        )
        return shared.step_counts(rows)

    async def last_seq(self, run_id: str) -> int:
        value = await self._read(
            f"read the last event of run {run_id!r}",
            lambda conn: conn.fetchval(SQL.last_seq, run_id),
        )
        return int(value)

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        rows = await self._read(
            f"read the steps of run {run_id!r}", lambda conn: conn.fetch(SQL.get_steps, run_id)
        )
        return [shared.step_record(row) for row in rows]

    async def get_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        if limit is not None:
            shared.check_limit(limit)
        rows = await self._read(
            f"read the events of run {run_id!r}",
            lambda conn: conn.fetch(SQL.get_events, run_id, after, limit),
        )
        return [shared.event(row) for row in rows]

    async def get_plan(self, digest: str) -> Plan | None:
        data = await self._read(
            f"read plan {digest!r}", lambda conn: conn.fetchval(SQL.get_plan, digest)
        )
        return None if data is None else Plan.from_bytes(data)

    async def follow(self, run_id: str, *, after: int = 0) -> AsyncIterator[Event]:
        self._check_open()

        async def read(last: int) -> list[Event]:
            return await self.get_events(run_id, after=last)

        async def finished() -> bool:
            status = await self._read(
                f"read run {run_id!r}", lambda conn: conn.fetchval(SQL.run_status, run_id)
            )
            if status is None:
                raise StoreError(f"cannot follow run {run_id!r}: no such run")
            return RunStatus(status).finished

        await self._listen()
        async for event in follow_log(_ListenWatch(self, run_id), read, finished, after=after):
            yield event

    # -- leases -----------------------------------------------------------------------------

    async def acquire_runs(self, owner: str, lease: float, *, limit: int = 100) -> list[RunRecord]:
        shared.check_lease(lease)
        shared.check_limit(limit)
        async with self._connection("acquire runs") as conn:
            rows = await conn.fetch(SQL.acquire_runs, owner, lease, limit)
        rows.sort(key=lambda row: (row["created_at"], row["serial"]))
        return [shared.run_record(row[1:]) for row in rows]

    async def renew_leases(
        self, owner: str, lease: float, held: Mapping[str, int] | None = None
    ) -> set[str]:
        shared.check_lease(lease)
        async with self._connection("renew leases") as conn:
            if held is None:
                rows = await conn.fetch(SQL.renew_leases, owner, lease)
            else:
                ids = sorted(held)
                epochs = [held[run_id] for run_id in ids]
                rows = await conn.fetch(SQL.renew_held_leases, owner, lease, ids, epochs)
        return {row[0] for row in rows}

    async def owners(self, run_ids: Iterable[str]) -> dict[str, Ownership]:
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        rows = await self._read(
            "read the owners of runs", lambda conn: conn.fetch(SQL.run_owners, wanted)
        )
        return {
            row[0]: Ownership(row[0], RunStatus(row[1]), row[2], row[3], row[4]) for row in rows
        }

    async def release_runs(self, owner: str, run_ids: Iterable[str] | None = None) -> None:
        chosen = None if run_ids is None else list(run_ids)
        async with self._connection("release runs") as conn:
            await conn.execute(SQL.release_runs, owner, chosen)

    # -- cancel requests --------------------------------------------------------------------

    async def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        async with self._connection(f"record a cancel request for run {run_id!r}") as conn:
            await conn.execute(SQL.request_cancel, _text(run_id), _text_or_none(reason))

    async def cancel_requests(self, run_ids: Iterable[str]) -> dict[str, str | None]:
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return {}
        rows = await self._read(
            "read cancel requests", lambda conn: conn.fetch(SQL.cancel_requests, wanted)
        )
        return {row[0]: row[1] for row in rows}

    # -- retention --------------------------------------------------------------------------

    async def finished_runs(
        self, before: float, *, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        shared.check_limit(limit)
        after_ts, after_id = after or (-math.inf, "")
        rows = await self._read(
            "list finished runs",
            lambda conn: conn.fetch(SQL.finished_runs, before, limit, after_ts, after_id),
        )
        return [shared.run_record(row) for row in rows]

    async def take_tokens(self, bucket: str, rate: Rate, want: int) -> tuple[int, float]:
        async with self._transaction("take tokens") as conn:
            await conn.execute(SQL.create_bucket, bucket, float(rate.count))
            tokens, updated_at, now = await conn.fetchrow(SQL.lock_bucket, bucket)
            left, granted, retry_in = shared.take_from_bucket((tokens, updated_at), now, rate, want)
            await conn.execute(SQL.put_bucket, bucket, left, now)
        return granted, retry_in

    async def sync_slots(self, frees: Sequence[SlotFree], takes: Sequence[SlotTake]) -> list[bool]:
        if not (frees or takes):
            return []
        async with self._transaction("take and free limit slots") as conn:
            # Every cap this call takes from, locked first and in one order (no deadlock
            # with another coordinator's call), before its frees touch any slot row.
            for gate in sorted({gate for take in takes for gate, _ in take.caps}):
                await conn.execute(SQL.lock_gate, gate)
            by_run = [free.run_id for free in frees if free.step is None]
            by_step = [free for free in frees if free.step is not None]
            if by_run:
                await conn.execute(SQL.release_runs_slots, by_run)
                await conn.execute(SQL.release_runs_waits, by_run)
            if by_step:
                await conn.execute(
                    SQL.release_steps_slots,
                    [free.run_id for free in by_step],
                    [free.step for free in by_step],
                    [free.attempt for free in by_step],
                )
            now = await conn.fetchval(SQL.clock)
            return [await self._take_slots(conn, take, now) for take in takes]

    @staticmethod
    async def _take_slots(conn: asyncpg.Connection, take: SlotTake, now: float) -> bool:
        run_id, step = take.run_id, take.step
        fresh = now - shared.SLOT_WAIT_TTL
        needed: list[str] = []
        for gate, capacity in take.caps:
            used, held, ahead = await conn.fetchrow(SQL.gate_usage, gate, run_id, step, now, fresh)
            if not held:
                if used + ahead >= capacity and used >= capacity:
                    await conn.execute(SQL.prune_gate, gate)
                    used, _, _ = await conn.fetchrow(SQL.gate_usage, gate, run_id, step, now, fresh)
                if used + ahead >= capacity:  # full, or the free slots are others' turn
                    await conn.execute(SQL.put_wait, gate, run_id, step, now, fresh)
                    return False
            needed.append(gate)
        await conn.execute(SQL.put_slots, needed, run_id, step, take.attempt)
        return True

    async def keep_slots(self, run_id: str, steps: Iterable[str]) -> list[str]:
        async with self._transaction("release limit slots") as conn:
            await conn.execute(SQL.prune_run_slots, run_id, sorted(set(steps)))
            rows = await conn.fetch(SQL.run_slot_steps, run_id)
        return sorted(row[0] for row in rows)

    async def slot_holders(self, gate: str) -> list[tuple[str, str, int]]:
        rows = await self._read("read limit slots", lambda conn: conn.fetch(SQL.slot_holders, gate))
        return [(row[0], row[1], int(row[2])) for row in rows]

    async def delete_runs(self, run_ids: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return []
        async with self._transaction("delete runs") as conn:
            rows = await conn.fetch(SQL.lock_finished_runs, wanted)
            found = [row[0] for row in rows]
            if found:
                await conn.execute(SQL.delete_deliveries_of_runs, found)
                await conn.execute(SQL.delete_events_of_runs, found)
                await conn.execute(SQL.delete_steps_of_runs, found)
                await conn.execute(SQL.delete_runs, found)
                await conn.execute(SQL.delete_cancel_requests, found)
                await conn.execute(SQL.delete_unused_plans, sorted({row[1] for row in rows}))
        order = set(found)
        return [run_id for run_id in wanted if run_id in order]

    async def claim_deliveries(
        self, owner: str, lease: float, *, now: float, limit: int = 20
    ) -> list[WebhookDelivery]:
        shared.check_limit(limit)
        shared.check_lease(lease)
        async with self._transaction("claim webhook deliveries") as conn:
            rows = await conn.fetch(SQL.claim_deliveries, owner, now, lease, limit)
        found = [shared.delivery_record(row) for row in rows]
        return sorted(found, key=lambda d: (d.next_at, d.id))

    async def settle_delivery(self, delivery_id: str, owner: str, outcome: Attempted) -> bool:
        async with self._transaction("record a webhook delivery") as conn:
            row = await conn.fetchrow(SQL.held_delivery, delivery_id, owner)
            if row is None:
                return False
            after = shared.attempted(shared.delivery_record(row), outcome)
            await conn.execute(
                SQL.settle_delivery,
                after.id,
                after.next_at,
                after.status.value,
                after.attempts,
                after.finished_at,
                after.last_status,
                after.last_error,
            )
        return True

    async def get_deliveries(self, run_id: str) -> list[WebhookDelivery]:
        async def read(conn: Any) -> Any:
            return await conn.fetch(SQL.run_deliveries, run_id)

        rows = await self._read(f"read the deliveries of run {run_id!r}", read)
        return [shared.delivery_record(row) for row in rows]

    async def next_delivery_at(self) -> float | None:
        async def read(conn: Any) -> Any:
            return await conn.fetchval(SQL.next_delivery_at)

        found: float | None = await self._read("read the next delivery", read)
        return found

    # -- plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> Any:
        if self._pool is None:
            raise StoreError(f"{self!r} is not open")
        return self._pool

    @asynccontextmanager
    async def _connection(self, action: str, within: float | None = None) -> AsyncIterator[Any]:
        """A pool connection for one call, all of it under ``within`` seconds (default
        ``timeout``); failures come out as store errors, and a connection in an unknown
        state is closed, not reused."""
        pool = self._check_open()
        try:
            async with asyncio.timeout(within or self.timeout):
                conn = await pool.acquire()
                try:
                    yield conn
                except BaseException as exc:
                    if not _connection_is_sound(exc):
                        _discard(conn)  # mid-query or broken: its state is unknown
                    raise
                finally:
                    await pool.release(conn)
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(action, exc, within) from exc

    async def _read(self, action: str, read: Callable[[Any], Awaitable[T]]) -> T:
        """``read(connection)`` in :meth:`_connection`, once more on a new connection if the
        first one turned out to be dead: the pool finds out that a connection died while
        idle (a database restart, a dropped link) only by using it.  Reads only: a write
        that failed that way may or may not have committed."""
        try:
            async with self._connection(action) as conn:
                return await read(conn)
        except StoreUnavailableError as exc:
            if not isinstance(exc.__cause__, _LOST):
                raise
            log.debug("%s; reading again on a new connection", exc)
        async with self._connection(action) as conn:
            return await read(conn)

    @asynccontextmanager
    async def _transaction(
        self, action: str, within: float | None = None, *, commit: _Commit | None = None
    ) -> AsyncIterator[Any]:
        """:meth:`_connection` in a transaction.  A connection that failed is closed
        without a ROLLBACK (which could wait forever on it): the server rolls back.
        ``commit`` is told when the COMMIT starts."""
        async with self._connection(action, within) as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                yield conn
            except BaseException as exc:
                if _connection_is_sound(exc):
                    await transaction.rollback()
                else:
                    _discard(conn)
                raise
            if commit is not None:
                commit.committing = True
            await transaction.commit()

    def _error(self, action: str, exc: BaseException, within: float | None = None) -> StoreError:
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {within or self.timeout:g} s"
        else:
            detail = " ".join(str(exc).split()) or type(exc).__name__
        transient = isinstance(exc, _UNAVAILABLE) and not isinstance(
            exc,
            asyncpg.ClientConfigurationError,  # a bad option in the URL: fix, not retry
        )
        error = StoreUnavailableError if transient else StoreError
        return error(f"PostgreSQL store {self._name}: cannot {action}: {detail}")

    async def _migrate(self) -> None:
        available = migrations()
        within = max(self.timeout, MIGRATION_TIMEOUT)
        async with self._transaction("migrate the schema", within) as conn:
            await conn.execute(SQL.lock_migrations, MIGRATION_LOCK)
            await conn.execute(SQL.create_migrations_table)
            applied = [row[0] for row in await conn.fetch(SQL.applied_migrations)]
            if applied and applied[-1] > len(available):
                raise StoreError(
                    f"PostgreSQL store {self._name}: schema version {applied[-1]} is newer "
                    f"than this aexec supports ({len(available)}); upgrade aexec"
                )
            for migration in available:
                if migration.version not in applied:
                    log.info("applying migration %s to %s", migration.name, self._name)
                    await conn.execute(migration.sql)
                    await conn.execute(SQL.record_migration, migration.version)

    async def _listen(self) -> bool:
        """Make sure the ``LISTEN`` connection is up; True if it was (re)opened just now (a
        notification may have been missed before).  Best effort: without it, followers
        poll every ``FOLLOW_FALLBACK`` seconds."""
        if self._listener is not None and not self._listener.is_closed():
            return False
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return False
            self._listener = None
            self._check_open()
            try:
                async with asyncio.timeout(self.timeout):
                    listener = await asyncpg.connect(self.dsn, timeout=self.timeout)
                    try:
                        await listener.add_listener(CHANNEL, self._notified)
                    except BaseException:
                        listener.terminate()
                        raise
            except Exception as exc:
                level = logging.DEBUG if self._listen_failed else logging.WARNING
                log.log(level, "%s; followers poll instead", self._error("listen", exc))
                self._listen_failed = True
                return False
            if self._pool is None:  # closed meanwhile
                listener.terminate()
                return False
            if self._listen_failed:
                log.info("PostgreSQL store %s: listening again", self._name)
                self._listen_failed = False
            listener.add_termination_listener(self._listener_lost)
            self._listener = listener
            self._wakeups.notify_all()
            return True

    def _notified(self, connection: Any, pid: int, channel: str, run_id: str) -> None:
        self._wakeups.notify(run_id)

    def _listener_lost(self, connection: Any) -> None:
        self._wakeups.notify_all()  # re-read now; the next wait reconnects


class _ListenWatch:
    """Woken by ``NOTIFY``; re-reads at least every ``FOLLOW_FALLBACK`` seconds anyway, in
    case a notification was lost with a connection."""

    def __init__(self, store: PostgresStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id
        self._ticket = asyncio.Event()

    def arm(self) -> None:
        self._ticket = self._store._wakeups.ticket(self._run_id)

    async def wait(self) -> None:
        if await self._store._listen():
            return
        await wait_for_ticket(self._ticket, FOLLOW_FALLBACK)


def _discard(conn: Any) -> None:
    """Close a pool connection at once (the pool opens another when needed)."""
    with suppress(asyncpg.InterfaceError):  # already closed and handed back to the pool
        conn.terminate()


class _Commit:
    """A transaction of :meth:`PostgresStore.append`: its id and server process, and
    whether its COMMIT was sent."""

    __slots__ = ("committing", "pid", "xid")

    def __init__(self) -> None:
        self.xid: int | None = None
        self.pid = 0
        self.committing = False

    def begun(self, xid: int, conn: Any) -> None:
        self.xid = xid
        self.pid = conn.get_server_pid()


def _connection_is_sound(exc: BaseException) -> bool:
    """After ``exc``, is the connection still usable?  Yes after an error the server
    reported (a constraint, a bad statement) or one of ours; not after a connection
    failure, a timeout or a cancellation (a query may be half-way through the wire)."""
    return isinstance(exc, StoreError | asyncpg.PostgresError) and not isinstance(exc, _UNAVAILABLE)


async def _keep_session(connection: Any) -> None:
    """Pool reset on release, instead of asyncpg's default ``RESET ALL; UNLISTEN *; ...``
    round trip: this store never changes session state on pool connections (its ``LISTEN``
    has a connection of its own), and any transaction has ended by release."""


def _text(value: str) -> str:
    """``value`` as a PostgreSQL text column can hold it: a NUL character (which text
    refuses, where every other store takes it) is kept as the four characters ``\\x00``.
    Every text value this adapter writes from outside data goes through here."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def _text_or_none(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _delivery_columns(outbox: Sequence[WebhookDelivery]) -> list[list[Any]]:
    return [
        [d.id for d in outbox],
        [d.run_id for d in outbox],
        [d.url for d in outbox],
        [d.event for d in outbox],
        [d.body for d in outbox],
        [d.created_at for d in outbox],
        [d.next_at for d in outbox],
    ]


def _creatable(run: RunRecord, plan: Plan) -> list[Any]:
    """The columns of a run to create; a StoreError if it names another plan."""
    if run.plan_digest != plan.digest:
        raise StoreError(f"run {run.run_id!r} names plan {run.plan_digest!r}, not the plan given")
    params = shared.dump_json(run.params, "run params")
    return [_text(c) if isinstance(c, str) else c for c in shared.run_columns(run, params)]


def _event_columns(events: Sequence[Event]) -> list[list[Any]]:
    """The ``insert_events`` arrays: run_id, ts, kind, step, attempt, data."""
    return [
        [e.run_id for e in events],
        [e.ts for e in events],
        [e.kind.value for e in events],
        [_text_or_none(e.step) for e in events],
        [e.attempt for e in events],
        [shared.dump_json(e.data, f"{e.kind} event data") if e.data else None for e in events],
    ]


def _round_columns(changes: list[Event]) -> tuple[list[list[Any]], list[list[Any]]]:
    """One round of row changes as the ``update_steps`` and ``update_runs`` arrays."""
    steps: list[list[Any]] = [[] for _ in range(9)]
    runs: list[list[Any]] = [[] for _ in range(5)]
    for event in changes:
        worker, error, failure = shared.change_data(event)
        status = fold.STEP_STATUS.get(event.kind)
        if status is not None:
            row: tuple[Any, ...] = (
                event.run_id,
                _text_or_none(event.step),
                status.value,
                event.attempt,
                event.ts,
                _text_or_none(worker),
                error,
                event.output,
                failure,
            )
            for column, value in zip(steps, row, strict=True):
                column.append(value)
        else:
            row = (
                event.run_id,
                fold.RUN_STATUS[event.kind].value,
                event.ts,
                _text_or_none(error),
                event.output,
            )
            for column, value in zip(runs, row, strict=True):
                column.append(value)
    return steps, runs
