"""The collector's young threshold is raised while an embedded engine runs, and put back."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from aexec import collector, pipeline, step
from aexec.config import Settings
from aexec.executor import Executor


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The test's starting thresholds: CPython's defaults (a test changes them)."""
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_the_young_threshold_is_raised_in_the_block_and_put_back_after() -> None:
    with collector.relaxed(5000):
        assert gc.get_threshold() == (5000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_nested_blocks_share_one_relaxation_put_back_when_the_last_one_ends() -> None:
    first, second = collector.relaxed(5000), collector.relaxed(5000)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # engines may stop in any order
    assert gc.get_threshold() == (5000, 10, 10)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_thresholds_someone_set_meanwhile_stay() -> None:
    with collector.relaxed(5000):
        gc.set_threshold(1234, 5, 5)
    assert gc.get_threshold() == (1234, 5, 5)


@pytest.mark.parametrize("young", [0, 20_000])
def test_a_collector_off_or_already_as_relaxed_is_left_alone(young: int) -> None:
    gc.set_threshold(young, 10, 10)
    with collector.relaxed(5000):
        assert gc.get_threshold() == (young, 10, 10)
    assert gc.get_threshold() == (young, 10, 10)


def test_the_threshold_is_put_back_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), collector.relaxed(5000):
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)


@step
async def seen() -> int:
    return gc.get_threshold()[0]


@pipeline
def threshold() -> object:
    return seen()


async def test_an_embedded_engine_runs_its_steps_relaxed_and_puts_the_threshold_back(
    tmp_path: Path,
) -> None:
    async with Executor(Settings(home=str(tmp_path))) as ex:
        assert await (await ex.submit(threshold)).result() == collector.YOUNG_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)
