"""aexec.testing: pipelines run in memory, and tests await their events."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

import aexec.testing
from aexec import pipeline, remote_step, step
from aexec.errors import ConfigError
from aexec.events import EventKind
from aexec.objects.memory import MemoryObjectStore
from aexec.store.memory import MemoryStore
from aexec.testing import wait_for_event


@step
async def double(x: int) -> int:
    return 2 * x


@pipeline
def twice(x: int = 3) -> object:
    return double.alias("second")(double.alias("first")(x))


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


async def test_the_executor_runs_pipelines_on_memory_adapters_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AEXEC_BROKER", "amqp://nowhere.invalid/")
    monkeypatch.setenv("AEXEC_STORE", f"sqlite:///{tmp_path}/runs.db")
    async with aexec.testing.executor() as ex:
        assert ex.settings.embedded
        assert isinstance(ex.store, MemoryStore)
        assert isinstance(ex.objects, MemoryObjectStore)
        assert await (await ex.submit(twice, x=5)).result() == 20
    assert entries(tmp_path) == []  # nothing written: no .aexec home, no database


async def test_settings_pass_through_to_the_executor() -> None:
    @step
    async def big() -> bytes:
        return b"x" * 4096

    @pipeline
    def p() -> object:
        return big()

    async with aexec.testing.executor(inline_threshold=1024, concurrency=3) as ex:
        assert ex.settings.concurrency == 3
        run = await ex.submit(p)
        assert await run.result() == b"x" * 4096
        stored = await ex.objects.get(f"outputs/{run.run_id}/big/1")  # too large to inline
        assert len(stored) > 4096


async def test_steps_implement_remote_steps() -> None:
    scan = remote_step("scan", queue="scanners")

    @step(name="scan", queue="scanners")
    async def fake_scan(url: str) -> str:
        return f"scanned {url}"

    @pipeline
    def p() -> object:
        return scan(url="x")

    async with aexec.testing.executor(steps=[fake_scan]) as ex:
        assert await (await ex.submit(p)).result() == "scanned x"


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"broker": "amqp://localhost/"},
        {"store": "sqlite:///runs.db"},
        {"objects": "file:///tmp/objects"},
    ],
    ids=["broker", "store", "objects"],
)
async def test_a_backend_outside_memory_is_a_config_error(elsewhere: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="memory only") as info:
        async with aexec.testing.executor(**elsewhere):
            pass  # pragma: no cover - never entered
    assert next(iter(elsewhere)) in str(info.value)


async def test_a_submitted_run_is_an_aexec_run() -> None:
    async with aexec.testing.executor() as ex:
        run = await ex.submit(twice, x=2)
        assert isinstance(run, aexec.Run)
        assert repr(run) == f"<Run {run.run_id} twice {run.status}>"
        await run.wait()


async def test_wait_for_event_returns_the_first_matching_event_of_a_run() -> None:
    async with aexec.testing.executor() as ex:
        run = await ex.submit(twice, x=3)
        dispatched = await wait_for_event(run, EventKind.STEP_DISPATCHED)
        assert dispatched.step == "first"
        second = await wait_for_event(run, EventKind.STEP_SUCCEEDED, step="second")
        assert second.step == "second" and second.attempt == 1
        assert await run.result() == 12
        # After the end, the run's history is searched from its start.
        assert (await wait_for_event(run, EventKind.STEP_SUCCEEDED)).step == "first"


async def test_wait_for_event_reads_any_stream_of_events_and_closes_it() -> None:
    async with aexec.testing.executor() as ex:
        run = await ex.submit(twice, x=1)
        stream = ex.store.follow(run.run_id)
        event = await wait_for_event(stream, EventKind.STEP_SUCCEEDED, step="second")
        assert event.attempt == 1
        with pytest.raises(StopAsyncIteration):
            await anext(stream)  # closed: the helper does not leave a follower behind
        await run.wait()


async def test_events_that_end_without_the_event_are_an_assertion_error() -> None:
    async with aexec.testing.executor() as ex:
        run = await ex.submit(twice, x=1)
        with pytest.raises(AssertionError, match="step_failed event of step 'first'"):
            await wait_for_event(run, EventKind.STEP_FAILED, step="first")


async def test_the_wait_is_bounded_by_a_timeout_scope() -> None:
    gate = asyncio.Event()

    @step
    async def held() -> None:
        await gate.wait()

    @pipeline
    def p() -> object:
        return held()

    async with aexec.testing.executor() as ex:
        run = await ex.submit(p)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await wait_for_event(run, EventKind.STEP_SUCCEEDED)
        gate.set()
        assert (await wait_for_event(run, EventKind.RUN_SUCCEEDED)).step is None


async def test_the_module_example_passes() -> None:
    doc = aexec.testing.__doc__ or ""
    example = textwrap.dedent(doc.split("::\n", 1)[1].split("\n\n:func:", 1)[0])
    namespace: dict[str, Any] = {}
    exec(compile(example, "aexec.testing example", "exec"), namespace)
    await namespace["test_twice_doubles_twice"]()
