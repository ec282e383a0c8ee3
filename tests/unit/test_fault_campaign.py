"""The fault campaign's pure parts: a seed gives one schedule of runs and faults, every
planned run has an expected outcome, the poison really is poison, and a ledger line reads
back as the execution it records."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from aexec import context, messages
from aexec.errors import CodecError
from benchmarks.faults import ledger, poison
from benchmarks.faults.__main__ import replay_command
from benchmarks.faults.schedule import KINDS, parse_kinds, plan_faults
from benchmarks.faults.workload import BY_NAME, expect, plan_runs


def test_a_seed_gives_the_same_fault_schedule_and_another_seed_another() -> None:
    kinds = tuple(KINDS)
    first = plan_faults(random.Random(5), 80, 2.0, 100.0, kinds)
    assert first == plan_faults(random.Random(5), 80, 2.0, 100.0, kinds)
    assert first != plan_faults(random.Random(6), 80, 2.0, 100.0, kinds)


def test_a_schedule_holds_every_kind_in_time_order_within_its_window() -> None:
    schedule = plan_faults(random.Random(1), 40, 2.0, 60.0, tuple(KINDS))
    assert len(schedule) == 40
    assert {f.kind for f in schedule} == set(KINDS)
    assert [f.at for f in schedule] == sorted(f.at for f in schedule)
    assert all(2.0 <= f.at <= 60.0 and 0.0 <= f.choice < 1.0 for f in schedule)


def test_kinds_can_be_chosen_or_left_out_by_name() -> None:
    assert parse_kinds(None) == tuple(KINDS)
    assert parse_kinds("cancel,db-cut") == ("cancel", "db-cut")
    assert "poison-run" not in parse_kinds("-poison-run")
    assert len(parse_kinds("-poison-run")) == len(KINDS) - 1
    with pytest.raises(ValueError, match="unknown fault kind 'nap'"):
        parse_kinds("nap")


def test_a_seed_gives_the_same_runs_each_with_an_expected_outcome() -> None:
    runs = plan_runs(random.Random(3), 120, 50.0)
    assert runs == plan_runs(random.Random(3), 120, 50.0)
    assert [r.tag for r in runs] == list(range(1, 121))
    assert [r.at for r in runs] == sorted(r.at for r in runs) and runs[0].at == 0.0
    assert len({r.shape for r in runs}) > 5
    for r in runs:
        expected = expect(r.shape, r.params)
        assert expected is not None and expected.status in ("succeeded", "failed")
        BY_NAME[r.shape].pipeline.compile(**r.params)  # the parameters fit the pipeline


def test_only_campaign_runs_have_an_expected_outcome() -> None:
    assert expect("chain", {"tag": 4, "n": 3, "ms": 5}) is not None
    assert expect("chain", {"n": 3}) is None
    assert expect("somebody_elses", {"tag": 1}) is None


@pytest.mark.parametrize("variant", range(len(poison.MALFORMED_FORMS)))
def test_every_malformed_body_is_refused_by_the_decoder(variant: int) -> None:
    form, body = poison.malformed(7, variant)
    assert form == poison.MALFORMED_FORMS[variant]
    with pytest.raises(CodecError):
        messages.decode(body)
    assert body != poison.malformed(7, variant)[1]  # unique: matched by digest later


def test_the_oversized_body_is_one_byte_over_the_limit() -> None:
    body = poison.oversized(3)
    assert len(body) == messages.MAX_BODY + 1
    with pytest.raises(CodecError, match="exceeds"):
        messages.decode(body)


def test_the_absurd_submission_is_well_formed_but_for_its_id() -> None:
    run_id, body = poison.absurd_submission(2, tag=9)
    decoded = messages.decode(body)
    assert isinstance(decoded, messages.Submit)
    assert decoded.run_id == run_id and len(run_id) == poison.ABSURD_ID_LENGTH


def test_the_replay_command_keeps_the_options_and_names_the_seed() -> None:
    assert replay_command(["--long", "--kinds=-poison-run", "--seed", "4"], 4) == (
        "python -m benchmarks.faults --long --kinds=-poison-run --seed 4"
    )
    assert replay_command(["--runs", "50", "--seed=9"], 9) == (
        "python -m benchmarks.faults --runs 50 --seed 9"
    )
    assert replay_command([], 77) == "python -m benchmarks.faults --seed 77"


def test_a_ledger_line_reads_back_as_the_execution_it_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path))
    monkeypatch.setenv(ledger.WORKER_ENV, "w9")
    token = context.bind(context.StepContext("run-1", "add3", 2, "add"))
    try:
        ledger.note()
        ledger.note()
    finally:
        context.unbind(token)
    (tmp_path / "w9.1.ledger").write_text("torn line\n")
    executions, unreadable = ledger.read(tmp_path)
    assert [(e.run_id, e.step, e.attempt, e.worker) for e in executions] == [
        ("run-1", "add3", 2, "w9")
    ] * 2
    assert executions[0].started <= executions[1].started
    assert unreadable == ["w9.1.ledger: 'torn line'"]


def test_outside_the_campaign_a_step_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ledger.LEDGER_ENV, raising=False)
    ledger.note()  # no step context needed either: it returns first
    assert list(tmp_path.iterdir()) == []
