"""Versions of steps: how a version routes a step, what a worker says it serves."""

from __future__ import annotations

from typing import Any

import pytest

from aexec import messages, pipeline, remote_step, step
from aexec.errors import DefinitionError
from aexec.plan import Plan


def test_a_version_routes_a_step_by_its_queue_and_name_and_stays_in_the_stored_plan() -> None:
    reconstruct = remote_step("reconstruct", queue="repo", version="2")
    plain = remote_step("reconstruct", queue="repo")

    @pipeline
    def room() -> Any:
        return reconstruct(url="u")

    @pipeline
    def any_room() -> Any:
        return plain(url="u")

    plan = Plan.from_bytes(room.compile().plan.to_bytes())
    step = plan.step("reconstruct")
    assert (step.version, step.route, step.address) == ("2", "repo@2", "reconstruct@2")
    assert plan.queues == frozenset({"repo@2"})
    unversioned = any_room.compile().plan
    assert (unversioned.step("reconstruct").route, unversioned.queues) == ("repo", {"repo"})
    assert unversioned.digest != plan.digest


@pytest.mark.parametrize("version", ["", "2 beta", "a@b", 2, "x" * 65])
def test_a_bad_version_is_a_definition_error(version: Any) -> None:
    with pytest.raises(DefinitionError, match="a version is a short string"):
        remote_step("r", version=version)
    with pytest.raises(DefinitionError, match="a version is a short string"):
        step(name="r", version=version)(lambda: None)


def test_worker_info_carries_the_steps_served_and_reads_workers_that_predate_it() -> None:
    info = messages.WorkerInfo("w", "h", 1, ["repo", "repo@2"], 0, 0.5, 1.0, ["r", "r@2"])
    assert messages.decode(info.encode()) == info
    old = messages.WorkerInfo("w", "h", 1, ["repo"], 0, 0.5, 1.0)
    wire = old.to_wire()[:7]
    assert messages.WorkerInfo.from_wire(wire).steps == []
