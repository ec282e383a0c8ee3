"""The step cache on the memory adapters: hits skip the step, misses run it."""

from __future__ import annotations

from aexec import pipeline, step
from aexec.events import EventKind
from aexec.executor import Executor
from aexec.types import StepStatus

calls: list[object] = []


def make(version: str, ttl: float | None = None) -> object:
    @step(name="expensive", cache=True, version=version, cache_ttl=ttl)
    async def expensive(x: int, label: str = "") -> int:
        calls.append((version, x))
        return x * 100

    @pipeline(name=f"uses_{version}")
    def uses(x: int = 1) -> object:
        return expensive(x)

    return uses


async def cached_steps(ex: Executor, run_id: str) -> dict[str, bool]:
    return {
        e.step: bool(e.data.get("cached"))
        for e in await ex.store.get_events(run_id)
        if e.kind is EventKind.STEP_SUCCEEDED and e.step is not None
    }


async def test_a_cache_hit_reuses_the_output_without_running_the_step(ex: Executor) -> None:
    calls.clear()
    uses = make("1")
    first = await ex.submit(uses, x=3)  # type: ignore[arg-type]
    assert await first.result() == 300
    second = await ex.submit(uses, x=3)  # type: ignore[arg-type]
    assert await second.result() == 300
    assert calls == [("1", 3)]  # ran once
    assert await cached_steps(ex, first.run_id) == {"expensive": False}
    assert await cached_steps(ex, second.run_id) == {"expensive": True}
    (row,) = await ex.get_steps(second.run_id)
    assert row.status is StepStatus.SUCCEEDED and row.attempts == 1


async def test_other_inputs_or_another_version_miss(ex: Executor) -> None:
    calls.clear()
    assert await (await ex.submit(make("1"), x=4)).result() == 400  # type: ignore[arg-type]
    assert await (await ex.submit(make("1"), x=5)).result() == 500  # type: ignore[arg-type]
    assert await (await ex.submit(make("2"), x=4)).result() == 400  # type: ignore[arg-type]
    assert calls == [("1", 4), ("1", 5), ("2", 4)]


async def test_an_expired_entry_is_a_miss(ex: Executor) -> None:
    calls.clear()
    uses = make("ttl", ttl=1e-6)
    assert await (await ex.submit(uses, x=1)).result() == 100  # type: ignore[arg-type]
    assert await (await ex.submit(uses, x=1)).result() == 100  # type: ignore[arg-type]
    assert calls == [("ttl", 1), ("ttl", 1)]


async def test_a_key_function_decides_what_counts_as_the_same_inputs(ex: Executor) -> None:
    ran: list[str] = []

    @step(cache=lambda path, label="": path, version="1")
    async def digest(path: str, label: str = "") -> str:
        ran.append(label)
        return f"digest of {path}"

    @pipeline
    def p(label: str = "a") -> object:
        return digest("/data/x", label)

    assert await (await ex.submit(p, label="a")).result() == "digest of /data/x"
    assert await (await ex.submit(p, label="b")).result() == "digest of /data/x"
    assert ran == ["a"]  # the label is not part of the key
