"""Live step output: what steps print, log, report and emit reaches their run's event log,
attributed to the attempt that did it, bounded, and never failing the step."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import aexec
from aexec import pipeline, step
from aexec.events import Event, EventKind
from aexec.executor import Executor
from aexec.types import RunStatus

STEP_LOGGER = "tests.steps"


def of_kind(events: list[Event], kind: EventKind, key: str | None = None) -> list[Event]:
    return [e for e in events if e.kind is kind and (key is None or e.step == key)]


def printed(events: list[Event], key: str, stream: str = "stdout") -> list[str]:
    return [
        line
        for e in of_kind(events, EventKind.STEP_OUTPUT, key)
        if e.data["stream"] == stream
        for line in e.data["lines"]
    ]


@pytest.fixture
def step_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=STEP_LOGGER)


async def test_what_async_and_sync_steps_print_log_report_and_emit_is_in_the_event_log(
    ex: Executor, step_logs: None
) -> None:
    @step
    async def fetch(n: int) -> int:
        print(f"fetching {n} rows")
        print("no newline yet", end="")
        print(" ... done")
        logging.getLogger(STEP_LOGGER).info("fetched %d rows", n)
        aexec.current().logger.warning("slow source")
        aexec.current().progress(0.5, "half")
        aexec.current().emit("rows", {"n": n, "source": "db"})
        print("to stderr", file=sys.stderr)
        return n

    @step
    def total(n: int) -> int:  # a sync step: runs in a thread
        print(f"summing {n}")
        logging.getLogger(STEP_LOGGER).debug("not recorded: below INFO")
        logging.getLogger(STEP_LOGGER).error("sum of %d", n)
        aexec.current().emit("done", [1, 2.5, None, "x"])
        print("last line without a newline", end="")
        return n * 2

    @pipeline
    def p() -> object:
        return total(fetch(3))

    run = await ex.submit(p)
    assert await run.result() == 6
    events = await ex.get_events(run.run_id)
    assert printed(events, "fetch") == ["fetching 3 rows", "no newline yet ... done"]
    assert printed(events, "fetch", "stderr") == ["to stderr"]
    assert printed(events, "total") == ["summing 3", "last line without a newline"]
    logs = [
        (e.step, e.data["level"], e.data["message"]) for e in of_kind(events, EventKind.STEP_LOG)
    ]
    assert logs == [
        ("fetch", "INFO", "fetched 3 rows"),
        ("fetch", "WARNING", "slow source"),
        ("total", "ERROR", "sum of 3"),
    ]
    assert of_kind(events, EventKind.STEP_LOG)[0].data["logger"] == STEP_LOGGER
    custom = [
        (e.step, e.data["name"], e.data["data"]) for e in of_kind(events, EventKind.STEP_EVENT)
    ]
    assert custom == [
        ("fetch", "rows", {"n": 3, "source": "db"}),
        ("total", "done", [1, 2.5, None, "x"]),
    ]
    (progress,) = of_kind(events, EventKind.STEP_PROGRESS, "fetch")
    assert (progress.data["fraction"], progress.data["message"]) == (0.5, "half")
    assert all(e.data["worker"] == "embedded" for e in of_kind(events, EventKind.STEP_OUTPUT))
    # Everything a step reported is recorded after its start and before its end.
    for key in ("fetch", "total"):
        kinds = [e.kind for e in events if e.step == key]
        started, done = kinds.index(EventKind.STEP_STARTED), kinds.index(EventKind.STEP_SUCCEEDED)
        reported = [
            i for i, k in enumerate(kinds) if k in (EventKind.STEP_OUTPUT, EventKind.STEP_LOG)
        ]
        assert reported and started < min(reported) and max(reported) < done


async def test_output_reaches_the_event_log_while_the_step_still_runs(ex: Executor) -> None:
    release = asyncio.Event()

    @step
    async def slow() -> None:
        print("started the slow part")
        await release.wait()

    @pipeline
    def p() -> object:
        return slow()

    run = await ex.submit(p)
    async with asyncio.timeout(5):
        seen = await aexec.testing.wait_for_event(run, EventKind.STEP_OUTPUT, step="slow")
    assert seen.data["lines"] == ["started the slow part"]
    release.set()
    await run.result()


async def test_each_line_is_attributed_to_the_step_that_wrote_it_when_many_run_at_once(
    ex: Executor, step_logs: None
) -> None:
    barrier = threading.Barrier(4, timeout=10)  # the thread pool has at least 5

    @step
    async def talk(i: int) -> None:
        for n in range(30):
            print(f"async {i} line {n}")
            logging.getLogger(STEP_LOGGER).info("async %d record %d", i, n)
            await asyncio.sleep(0)

    @step
    def chat(i: int) -> None:  # threads, all running at once
        barrier.wait()
        for n in range(30):
            print(f"sync {i} line {n}")
            logging.getLogger(STEP_LOGGER).info("sync %d record %d", i, n)
            time.sleep(0.0005)

    @pipeline
    def p() -> object:
        a = [talk.alias(f"talk{i}")(i) for i in range(8)]
        s = [chat.alias(f"chat{i}")(i) for i in range(4)]
        return [*a, *s]

    run = await ex.submit(p)
    await run.result()
    events = await ex.get_events(run.run_id)
    for key, kind, i in [(f"talk{i}", "async", i) for i in range(8)] + [
        (f"chat{i}", "sync", i) for i in range(4)
    ]:
        assert printed(events, key) == [f"{kind} {i} line {n}" for n in range(30)]
        if True:
            logged = [e.data["message"] for e in of_kind(events, EventKind.STEP_LOG, key)]
            assert logged == [f"{kind} {i} record {n}" for n in range(30)]


async def test_a_step_printing_ten_thousand_lines_has_every_line_recorded(ex: Executor) -> None:
    @step
    def chatty() -> int:
        for n in range(10_000):
            print(f"line {n}")
        return 1

    @pipeline
    def p() -> object:
        return chatty()

    run = await ex.submit(p)
    assert await run.result() == 1
    events = await ex.get_events(run.run_id)
    assert printed(events, "chatty") == [f"line {n}" for n in range(10_000)]
    outputs = of_kind(events, EventKind.STEP_OUTPUT)
    assert len(outputs) < 100  # lines travel and are recorded together, not one by one
    assert not of_kind(events, EventKind.STEP_OUTPUT_DROPPED)


async def test_odd_output_never_fails_the_step(ex: Executor) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    @step
    def odd() -> str:
        aexec.current().emit("weird", {"obj": Opaque(), "nan": float("nan"), 1: b"\x00"})
        aexec.current().emit("long", "x" * 200_000)
        aexec.current().emit("big", ["y" * 10_000] * 100)
        print("nul \x00 and a lone surrogate \udcff")
        aexec.current().progress(float("nan"), None)
        return "fine"

    @pipeline
    def p() -> object:
        return odd()

    run = await ex.submit(p)
    assert await run.result() == "fine"
    events = await ex.get_events(run.run_id)
    weird, long, big = of_kind(events, EventKind.STEP_EVENT)
    assert weird.data["data"] == {"obj": "<opaque>", "nan": "nan", "1": "b'\\x00'"}
    assert long.data["data"] == "x" * 16 * 1024 + " …[truncated]"
    assert "over the 65536-byte limit" in big.data["data"]["dropped"]
    assert printed(events, "odd") == ["nul \\x00 and a lone surrogate \\udcff"]


async def test_what_steps_in_a_process_pool_print_log_report_and_emit_is_recorded(
    tmp_path: Path,
) -> None:
    module = tmp_path / "talking_cpu.py"
    module.write_text(
        "import logging, os, sys, time\n"
        "import aexec\n"
        "from aexec import step\n"
        "@step\n"
        "def crunch(x: int) -> int:\n"
        "    print(f'crunching {x} in', os.getpid())\n"
        "    time.sleep(0.4)  # past a flush: the first line travels on its own\n"
        "    logging.getLogger('cpu').warning('crunched %d', x)\n"
        "    aexec.current().progress(1.0, 'done')\n"
        "    aexec.current().emit('squared', {'x': x, 'y': x * x})\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    for n in range(2000):\n"
        "        print(f'{x} line {n}')\n"
        "    print('no newline', end='')\n"
        "    return x * x\n"
    )
    from aexec.coordinator import Coordinator
    from aexec.loader import load_file
    from aexec.objects.memory import MemoryObjectStore
    from aexec.store.memory import MemoryStore
    from aexec.transport.memory import MemoryTransport
    from aexec.worker import Worker, WorkerConfig

    crunch = load_file(module).crunch

    @pipeline
    def crunching() -> object:
        return [crunch.alias(f"c{i}")(i) for i in range(3)]

    compiled = crunching.compile()
    transport, store = MemoryTransport(), MemoryStore()
    await transport.open()
    await store.open()
    config = WorkerConfig(pool="process", process_pool_size=2, modules=(str(module),))
    try:
        async with (
            Coordinator(transport, store) as coordinator,
            Worker(transport, MemoryObjectStore(), compiled.steps, config) as worker,
        ):
            await worker.serve("default")
            run = await coordinator.submit(compiled.plan)
            assert await asyncio.wait_for(run.done, 60) is RunStatus.SUCCEEDED
        events = await store.get_events(run.run_id)
    finally:
        await store.close()
        await transport.close()
    for i in range(3):
        lines = printed(events, f"c{i}")
        assert lines[0].startswith(f"crunching {i} in ")
        assert int(lines[0].split()[-1]) != os.getpid()  # printed in a child process
        assert lines[1:] == [f"{i} line {n}" for n in range(2000)] + ["no newline"]
        assert printed(events, f"c{i}", "stderr") == ["to stderr"]
        (logged,) = of_kind(events, EventKind.STEP_LOG, f"c{i}")
        assert (logged.data["level"], logged.data["message"]) == ("WARNING", f"crunched {i}")
        (emitted,) = of_kind(events, EventKind.STEP_EVENT, f"c{i}")
        assert emitted.data["data"] == {"x": i, "y": i * i}
        (progress,) = of_kind(events, EventKind.STEP_PROGRESS, f"c{i}")
        assert progress.data["fraction"] == 1.0
        kinds = [e.kind for e in events if e.step == f"c{i}"]
        assert kinds[-1] is EventKind.STEP_SUCCEEDED  # the last lines went ahead of it
        assert len(of_kind(events, EventKind.STEP_OUTPUT, f"c{i}")) >= 2  # live, then the rest


async def test_the_worker_s_own_log_lines_about_an_attempt_carry_its_run_step_and_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aexec import messages
    from aexec.coordinator import Coordinator
    from aexec.errors import TransportError
    from aexec.log import StepContextFilter
    from aexec.objects.memory import MemoryObjectStore
    from aexec.store.memory import MemoryStore
    from aexec.transport.memory import MemoryTransport
    from aexec.worker import Worker

    class CompletionFailsOnce(MemoryTransport):
        failed = False

        async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
            if not self.failed and isinstance(messages.decode(body), messages.Completion):
                self.failed = True
                raise TransportError("the broker is away for a moment")
            await super().publish(queue, body, priority=priority)

    @step
    async def first() -> int:
        return 1

    @pipeline
    def p() -> object:
        return first()

    compiled = p.compile()
    transport, store = CompletionFailsOnce(), MemoryStore()
    await transport.open()
    await store.open()
    caplog.handler.addFilter(StepContextFilter())
    caplog.set_level(logging.WARNING, logger="aexec.worker")
    try:
        async with (
            Coordinator(transport, store) as coordinator,
            Worker(transport, MemoryObjectStore(), compiled.steps) as worker,
        ):
            await worker.serve("default")
            run = await coordinator.submit(compiled.plan)
            assert await asyncio.wait_for(run.done, 30) is RunStatus.SUCCEEDED
    finally:
        await store.close()
        await transport.close()
    (retried,) = [r for r in caplog.records if "publishing the completion" in r.getMessage()]
    assert (retried.run_id, retried.step_key, retried.attempt) == (run.run_id, "first", 1)  # type: ignore[attr-defined]
    assert retried.step_context == f" [{run.run_id[:8]} first#1]"  # type: ignore[attr-defined]
