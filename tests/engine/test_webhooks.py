"""Webhooks against a real local HTTP server (aiohttp): signed notifications of a run's
ending, delivered from the store's outbox, retried with backoff, never in the scheduler's
way, and neither lost nor decided twice when a coordinator or a deliverer dies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aexec import pipeline, step
from aexec.config import Settings, Webhook
from aexec.coordinator import Coordinator, CoordinatorConfig
from aexec.events import Event, EventKind
from aexec.executor import Executor
from aexec.objects.memory import MemoryObjectStore
from aexec.store import DeliveryStatus, RunRecord, Store
from aexec.store.memory import MemoryStore
from aexec.store.sqlite import SqliteStore
from aexec.transport.memory import MemoryTransport
from aexec.types import RunStatus
from aexec.webhooks import SIGNATURE_HEADER, Deliverer, WebhookPolicy, Webhooks, verify
from aexec.worker import Worker, WorkerConfig
from tests.plugins.webhooks import Receiver

SECRET = "whsec-test"
WAIT = 10.0


def hook(url: str, *events: str, timeout: float = 5.0) -> Webhook:
    return Webhook(url, frozenset(events or ("run_failed",)), SECRET, timeout)


@step
def boom() -> None:
    raise ValueError("boom")


@step
def fine() -> int:
    return 1


@pipeline
def failing() -> object:
    return boom()


@pipeline
def working() -> object:
    return fine()


def settings(tmp_path: Path, *hooks: Webhook) -> Settings:
    return Settings(
        store=f"sqlite:///{tmp_path / 'runs.db'}",
        objects=f"file://{tmp_path / 'objects'}",
        webhooks=hooks,
    )


async def test_a_failed_run_posts_one_signed_notification_and_shows_it_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    other = hook(receiver.url.replace("/hooks", "/other"), "run_succeeded")
    async with Executor(settings(tmp_path, hook(receiver.url), other)) as ex:
        run = await ex.submit(failing)
        record = await run.wait()
        [call] = await receiver.wait_for(1)
    assert record.status is RunStatus.FAILED
    assert verify(SECRET, call.body, call.headers[SIGNATURE_HEADER])
    assert not verify("another secret", call.body, call.headers[SIGNATURE_HEADER])
    assert call.headers["Aexec-Event"] == "run_failed"
    assert call.headers["Content-Type"] == "application/json"
    body = call.json
    assert body["id"] == call.headers["Aexec-Delivery"]
    assert (body["event"], body["run_id"], body["pipeline"], body["status"]) == (
        "run_failed",
        record.run_id,
        "failing",
        "failed",
    )
    assert "boom" in body["error"]
    async with Executor(settings(tmp_path)) as reader:  # the coordinator has stopped
        [delivery] = await reader.get_deliveries(record.run_id)
    assert (delivery.status, delivery.attempts, delivery.last_status) == (
        DeliveryStatus.DELIVERED,
        1,
        200,
    )
    assert len(receiver.calls) == 1  # the succeeded-only webhook heard nothing


async def test_a_run_that_ends_otherwise_makes_no_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with Executor(settings(tmp_path, hook(receiver.url))) as ex:
        run = await ex.submit(working)
        record = await run.wait()
        assert record.status is RunStatus.SUCCEEDED
        assert await ex.get_deliveries(record.run_id) == []
    assert receiver.calls == []


async def ended_run(store: Store, webhooks: Webhooks, run_id: str = "r-1") -> None:
    """A run recorded as failed, with the deliveries its ending decides."""
    plan = failing.compile().plan
    await store.create_run(
        RunRecord(run_id, plan.pipeline, plan.digest, created_at=time.time()), plan
    )
    ending = Event(EventKind.RUN_FAILED, run_id, time.time(), data={"error": "boom"})
    await store.append([ending], outbox=webhooks.outbox([ending], {}))


async def test_an_endpoint_that_fails_is_tried_again_with_backoff_until_it_answers(
    receiver: Receiver,
) -> None:
    receiver.answers = [500, 503]
    store = MemoryStore()
    await store.open()
    webhooks = Webhooks([hook(receiver.url)])
    await ended_run(store, webhooks)
    policy = WebhookPolicy(backoff=0.2, max_attempts=5)
    async with Deliverer(store, webhooks, "d-1", policy):
        calls = await receiver.wait_for(3)
    assert calls[1].at - calls[0].at >= 0.2  # backoff 0.2 s, then 0.4 s
    assert calls[2].at - calls[1].at >= 0.4
    assert len({c.headers["Aexec-Delivery"] for c in calls}) == 1
    [delivery] = await store.get_deliveries("r-1")
    assert (delivery.status, delivery.attempts, delivery.last_status) == (
        DeliveryStatus.DELIVERED,
        3,
        200,
    )


async def test_a_delivery_is_given_up_after_its_last_attempt(receiver: Receiver) -> None:
    receiver.answers = [500, 500, 500]
    store = MemoryStore()
    await store.open()
    webhooks = Webhooks([hook(receiver.url)])
    await ended_run(store, webhooks)
    async with Deliverer(store, webhooks, "d-1", WebhookPolicy(backoff=0.05, max_attempts=2)):
        await receiver.wait_for(2)
    [delivery] = await store.get_deliveries("r-1")
    assert (delivery.status, delivery.attempts, delivery.last_status) == (
        DeliveryStatus.FAILED,
        2,
        500,
    )
    assert delivery.last_error == "HTTP 500: nope"
    assert len(receiver.calls) == 2


async def test_an_endpoint_that_refuses_connections_is_recorded_and_retried() -> None:
    store = MemoryStore()
    await store.open()
    webhooks = Webhooks([hook("http://127.0.0.1:9/hooks")])  # the discard port: refused
    await ended_run(store, webhooks)
    async with Deliverer(store, webhooks, "d-1", WebhookPolicy(backoff=60.0)):
        pass  # leaving sends what is due, within its grace
    [delivery] = await store.get_deliveries("r-1")
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.last_status is None and delivery.last_error
    assert delivery.next_at >= delivery.created_at + 60.0


async def test_a_hanging_endpoint_never_slows_the_runs(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answers = ["hang"] * 100
    async with Executor(settings(tmp_path, hook(receiver.url, timeout=30.0))) as ex:
        runs = [await ex.submit(failing) for _ in range(20)]
        async with asyncio.timeout(WAIT):
            records = [await run.wait() for run in runs]
        await receiver.wait_for(8, hanging=8)  # as many as the deliverer sends at once
        assert all(r.status is RunStatus.FAILED for r in records)
        assert len(receiver.calls) == 8  # the rest wait their turn, not the scheduler
        receiver.release.set()
        await receiver.wait_for(20)
    assert len({c.headers["Aexec-Delivery"] for c in receiver.calls}) == 20


async def test_the_decision_outlives_a_coordinator_killed_before_delivering(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The coordinator records the run's ending and dies before any delivery: a deliverer
    started later (another coordinator) finds the delivery in the store and sends it."""
    path = tmp_path / "runs.db"
    transport, store = MemoryTransport(), SqliteStore(path)
    await transport.open()
    await store.open()
    webhooks = Webhooks([hook(receiver.url)])
    compiled = failing.compile()
    async with Worker(transport, MemoryObjectStore(), compiled.steps, WorkerConfig(name="w")) as w:
        await w.serve("default")
        doomed = Coordinator(transport, store, CoordinatorConfig(id="doomed"), webhooks=webhooks)
        await doomed.__aenter__()
        run = await doomed.submit(compiled.plan)
        assert await asyncio.wait_for(asyncio.shield(run.done), WAIT) is RunStatus.FAILED
        await doomed.abort()  # as SIGKILL would; no deliverer ever ran
    [pending] = await store.get_deliveries(run.run_id)
    assert (pending.status, pending.attempts) == (DeliveryStatus.PENDING, 0)
    await store.close()
    await transport.close()

    heir = SqliteStore(path)  # another process, opening the same store
    await heir.open()
    async with Deliverer(heir, Webhooks([hook(receiver.url)]), "heir"):
        [call] = await receiver.wait_for(1)
    assert call.json["run_id"] == run.run_id
    [delivered] = await heir.get_deliveries(run.run_id)
    assert (delivered.status, delivered.attempts) == (DeliveryStatus.DELIVERED, 1)
    await heir.close()


async def test_a_deliverer_killed_mid_call_leaves_the_delivery_to_another_once_its_lease_ends(
    receiver: Receiver,
) -> None:
    receiver.answers = ["hang"]
    store = MemoryStore()
    await store.open()
    webhooks = Webhooks([hook(receiver.url)])
    await ended_run(store, webhooks)
    first = Deliverer(store, webhooks, "first", grace=0.0, lease=0.5)
    await first.__aenter__()
    await receiver.wait_for(1, hanging=1)
    await first.__aexit__(None, None, None)  # gone mid-call: nothing recorded, lease held
    [held] = await store.get_deliveries("r-1")
    assert (held.status, held.attempts) == (DeliveryStatus.PENDING, 0)
    started = time.monotonic()
    async with Deliverer(store, webhooks, "second", lease=0.5):
        calls = await receiver.wait_for(2)
    assert time.monotonic() - started >= 0.3  # it waited for the first one's lease to end
    assert calls[0].headers["Aexec-Delivery"] == calls[1].headers["Aexec-Delivery"]
    [delivery] = await store.get_deliveries("r-1")
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 1)
