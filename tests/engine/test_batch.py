"""One scheduler batch: each typed command and reply turns into events, steps to publish and
retry timers."""

from __future__ import annotations

import time

from aexec import messages
from aexec.batch import ActiveRun, Batch, Outgoing, RetryTimer
from aexec.events import EventKind
from aexec.inbox import Cancel, Resume, RetryDue, Start, Unconfirmed, WorkerLost
from aexec.plan import Plan, StepSpec, build
from aexec.retry import RetryPolicy
from aexec.scheduling import MAX_LOST, Dispatch, RunState
from aexec.types import ErrorInfo, RunStatus, StepStatus


def chain() -> Plan:
    """``first`` → ``second``; ``first`` may be retried twice."""
    return build(
        "p",
        [
            StepSpec(key="first", name="noop", retry=RetryPolicy(2, backoff=1.0)),
            StepSpec(key="second", name="noop", deps=("first",)),
        ],
    )


def driven(plan: Plan) -> tuple[ActiveRun, dict[str, ActiveRun]]:
    run = ActiveRun("r1", plan, 3, RunState(plan, sample=lambda: 0.5))
    return run, {run.run_id: run}


def completion(attempt: int, error: ErrorInfo | None = None) -> messages.Completion:
    now = time.time()
    return messages.Completion("r1", "first", attempt, b"\x01", error, "w", now, now)


async def test_a_start_records_the_start_and_publishes_the_steps_without_inputs() -> None:
    run, runs = driven(chain())
    batch = Batch(runs, "c1", {})
    batch.command(Start("r1"))
    assert [e.kind for e in batch.events] == [EventKind.RUN_STARTED, EventKind.STEP_DISPATCHED]
    assert batch.events[0].data["coordinator"] == "c1"
    assert batch.outgoing == [Outgoing(run, 0, 1)]


async def test_commands_for_a_run_this_coordinator_does_not_drive_are_dropped() -> None:
    _, runs = driven(chain())
    batch = Batch(runs, "c1", {})
    for command in (Start("r2"), Cancel("r2"), RetryDue("r2", 0, 2), WorkerLost("r2", 0, 1, "w")):
        batch.command(command)
    assert batch.events == [] and batch.outgoing == [] and batch.retries == []


async def test_a_retryable_failure_arms_a_timer_that_publishes_the_next_attempt() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    failed = Batch(runs, "c1", {})
    assert failed.reply(completion(1, ErrorInfo("ValueError", "boom")))
    (timer,) = failed.retries
    assert timer == RetryTimer(timer.delay, RetryDue("r1", 0, 2))
    (retrying,) = failed.events
    assert retrying.kind is EventKind.STEP_RETRYING and retrying.data["retry_in"] == timer.delay
    assert failed.outgoing == []
    due = Batch(runs, "c1", {})
    due.command(timer.due)
    assert due.outgoing == [Outgoing(run, 0, 2)]
    assert [e.kind for e in due.events] == [EventKind.STEP_DISPATCHED]


async def test_a_lost_worker_gives_its_step_a_new_attempt_without_spending_a_retry() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    run.running_on[0] = "w"
    batch = Batch(runs, "c1", {})
    batch.command(WorkerLost("r1", 0, 1, "w"))
    (retrying, dispatched) = batch.events
    assert retrying.kind is EventKind.STEP_RETRYING
    assert retrying.data["error"]["type"] == "WorkerLostError"
    assert dispatched.kind is EventKind.STEP_DISPATCHED and dispatched.attempt == 2
    assert batch.outgoing == [Outgoing(run, 0, 2)]
    assert run.running_on == {}
    stale = Batch(runs, "c1", {})
    stale.command(WorkerLost("r1", 0, 1, "w"))  # that attempt is superseded already
    assert stale.events == []


async def test_a_resumed_run_records_whom_it_was_taken_over_from_and_carries_on() -> None:
    run, runs = driven(chain())
    batch = Batch(runs, "heir", {})
    batch.command(Resume("r1", (Dispatch(0, 2),), "doomed"))
    (resumed, dispatched) = batch.events
    assert resumed.kind is EventKind.RUN_RESUMED
    assert resumed.data == {"coordinator": "heir", "previous": "doomed"}
    assert dispatched.kind is EventKind.STEP_DISPATCHED
    assert batch.outgoing == [Outgoing(run, 0, 2)]


async def test_a_cancel_cancels_every_unfinished_step_and_finishes_the_run() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    batch.command(Cancel("r1"))
    assert [e.kind for e in batch.events] == [
        EventKind.STEP_CANCELLED,
        EventKind.STEP_CANCELLED,
        EventKind.RUN_CANCELLED,
    ]
    assert batch.finished == [run]
    assert run.state.status == [StepStatus.CANCELLED, StepStatus.CANCELLED]
    assert run.status is RunStatus.CANCELLED


async def test_only_completions_progress_and_heartbeats_belong_on_a_reply_queue() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    seen: dict[str, float] = {}
    batch = Batch(runs, "c1", seen)
    step = messages.StepMessage("r1", "first", 1, "noop", b"", [], None, "reply.c1")
    assert not batch.reply(step)
    assert batch.reply(messages.Heartbeat("w", time.time(), [("r1", "first", 1)]))
    assert batch.reply(messages.Progress("r1", "first", 1, "w", time.time(), 0.5))
    assert batch.reply(completion(1))
    assert [e.kind for e in batch.events] == [
        EventKind.STEP_STARTED,
        EventKind.STEP_PROGRESS,
        EventKind.STEP_SUCCEEDED,
        EventKind.STEP_DISPATCHED,
    ]
    assert batch.outgoing == [Outgoing(run, 1, 1)]
    assert set(seen) == {"w"}


def lost(attempt: int, worker: str, reason: str = "redelivered") -> messages.AttemptLost:
    return messages.AttemptLost("r1", "first", attempt, worker, reason)


async def test_an_attempt_reported_lost_runs_again_as_a_new_attempt_without_spending_a_retry() -> (
    None
):
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    assert batch.reply(lost(1, "w2"))  # nobody was known to run it: it may have started
    (retrying, dispatched) = batch.events
    assert retrying.kind is EventKind.STEP_RETRYING and retrying.attempt == 1
    assert retrying.data["error"]["type"] == "WorkerLostError"
    assert "w2 was redelivered this attempt" in retrying.data["error"]["message"]
    assert dispatched.kind is EventKind.STEP_DISPATCHED and dispatched.attempt == 2
    assert batch.outgoing == [Outgoing(run, 0, 2)]
    assert run.state.lost == {0: 1}  # counted as lost, not as a failure
    stale = Batch(runs, "c1", {})
    assert stale.reply(lost(1, "w3"))  # a report about a superseded attempt
    assert stale.events == [] and stale.outgoing == []


async def test_a_redelivered_copy_of_an_attempt_another_live_worker_runs_changes_nothing() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    seen = {"w1": time.monotonic()}
    Batch(runs, "c1", seen).reply(messages.Heartbeat("w1", time.time(), [("r1", "first", 1)]))
    assert run.running_on == {0: "w1"}
    batch = Batch(runs, "c1", seen)
    assert batch.reply(lost(1, "w2"))  # w1 lost its connection, not the step: it runs still
    assert batch.events == [] and batch.outgoing == []
    # Once w1's heartbeats lapse (the watchdog forgets it), a report is a lost attempt.
    del seen["w1"]
    again = Batch(runs, "c1", seen)
    assert again.reply(lost(1, "w2"))
    assert [e.kind for e in again.events] == [EventKind.STEP_RETRYING, EventKind.STEP_DISPATCHED]


async def test_the_worker_running_an_attempt_may_report_it_lost_itself() -> None:
    _, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    seen = {"w1": time.monotonic()}
    Batch(runs, "c1", seen).reply(messages.Heartbeat("w1", time.time(), [("r1", "first", 1)]))
    batch = Batch(runs, "c1", seen)
    assert batch.reply(lost(1, "w1", "crashed"))
    (retrying, dispatched) = batch.events
    assert "w1 lost the child process" in retrying.data["error"]["message"]
    assert dispatched.attempt == 2


async def test_a_step_whose_attempts_keep_being_lost_fails_after_the_bound() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    for attempt in range(1, MAX_LOST + 1):
        assert Batch(runs, "c1", {}).reply(lost(attempt, "w", "crashed"))
    last = Batch(runs, "c1", {})
    assert last.reply(lost(MAX_LOST + 1, "w", "crashed"))
    assert [e.kind for e in last.events] == [
        EventKind.STEP_FAILED,
        EventKind.STEP_SKIPPED,
        EventKind.RUN_FAILED,
    ]
    assert run.state.status[0] is StepStatus.FAILED


async def test_a_completion_whose_output_does_not_decode_fails_its_step_for_good() -> None:
    _run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    now = time.time()
    assert batch.reply(messages.Completion("r1", "first", 1, b"\xc1", None, "w", now, now))
    failed, skipped, ended = batch.events
    assert (failed.kind, skipped.kind, ended.kind) == (
        EventKind.STEP_FAILED,
        EventKind.STEP_SKIPPED,
        EventKind.RUN_FAILED,
    )
    error = failed.data["error"]
    assert (error["type"], error["retryable"]) == ("CodecError", False)  # never retried
    assert error["message"].startswith("step 'first' returned output that cannot be decoded")
    assert "\n" not in error["message"]
    assert batch.outgoing == [] and batch.retries == []


async def test_liveness_is_per_worker_instance_not_per_name() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    seen: dict[str, float] = {}
    batch = Batch(runs, "c1", seen)
    batch.reply(messages.Heartbeat("w", time.time(), [("r1", "first", 1)], "first-process"))
    batch.reply(messages.Heartbeat("w", time.time(), [], "second-process"))
    assert set(seen) == {"w#first-process", "w#second-process"}
    assert run.running_on == {0: "w#first-process"}  # the step is the first process's
    (started,) = batch.events
    assert started.data == {"worker": "w", "instance": "first-process"}


async def test_an_unconfirmed_dispatch_is_sent_again_as_a_new_attempt_spending_no_retry() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    batch.command(Unconfirmed("r1", 0, 1, "connection closed"))
    retrying, dispatched = batch.events
    assert retrying.kind is EventKind.STEP_RETRYING and retrying.attempt == 1
    assert retrying.data["lost"] is True and retrying.data["error"]["type"] == "PublishError"
    assert (dispatched.kind, dispatched.attempt) == (EventKind.STEP_DISPATCHED, 2)
    assert batch.outgoing == [Outgoing(run, 0, 2)]
    assert run.state.failures == [0, 0]
    again = Batch(runs, "c1", {})
    again.command(Unconfirmed("r1", 0, 1, "late"))  # attempt 1 is superseded: nothing
    assert again.events == [] and again.outgoing == []


async def test_a_lost_worker_is_logged_as_lost_not_as_a_failure() -> None:
    _run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    batch.command(WorkerLost("r1", 0, 1, "w"))
    assert batch.events[0].data["lost"] is True


def output(*entries: list[object]) -> messages.Output:
    return messages.Output("w", "i1", time.time(), list(entries))  # type: ignore[arg-type]


async def test_step_output_of_the_current_attempt_is_recorded_and_marks_it_started() -> None:
    run, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    seen: dict[str, float] = {}
    batch = Batch(runs, "c1", seen)
    assert batch.reply(output(["r1", "first", 1, 5.0, "stdout", {"lines": ["hi"]}]))
    started, printed = batch.events
    assert started.kind is EventKind.STEP_STARTED and started.data["worker"] == "w"
    assert printed.kind is EventKind.STEP_OUTPUT
    assert printed.data == {"worker": "w", "stream": "stdout", "lines": ["hi"]}
    assert run.running_on[0] == "w#i1" and "w#i1" in seen


async def test_step_output_of_other_runs_stale_attempts_and_unknown_steps_is_ignored() -> None:
    _, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    batch.reply(
        output(
            ["r2", "first", 1, 5.0, "stdout", {"lines": ["another coordinator's run"]}],
            ["r1", "first", 2, 5.0, "stdout", {"lines": ["a newer attempt"]}],
            ["r1", "first", 0, 5.0, "stdout", {"lines": ["an older attempt"]}],
            ["r1", "nope", 1, 5.0, "stdout", {"lines": ["no such step"]}],
        )
    )
    assert batch.events == [] and batch.touched == set()


async def test_step_output_data_is_clipped_and_made_plain_whoever_sent_it() -> None:
    _, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    batch.reply(
        output(
            ["r1", "first", 1, 5.0, "log", {"level": 5, "message": "x" * 100_000}],
            ["r1", "first", 1, 5.0, "progress", {"fraction": 7, "message": None}],
            ["r1", "first", 1, 5.0, "stderr", {"lines": "one\x00line"}],
            ["r1", "first", 1, 5.0, "event", {"name": "n", "data": {"deep": [[[[1]]]]}}],
            ["r1", "first", 1, 5.0, "dropped", {"entries": -1, "bytes": 10}],
        )
    )
    _, log, progress, stderr, event, dropped = batch.events
    assert log.data["level"] == "5" and len(log.data["message"]) < 17_000
    assert progress.data == {"worker": "w", "fraction": 1.0}
    assert stderr.data["lines"] == ["one\\x00line"]
    assert event.data["data"] == {"deep": [[[[1]]]]}
    assert dropped.data == {"worker": "w", "bytes": 10, "reason": "output dropped"}


async def test_a_pass_records_a_bounded_amount_of_step_output_and_marks_the_rest() -> None:
    _, runs = driven(chain())
    Batch(runs, "c1", {}).command(Start("r1"))
    batch = Batch(runs, "c1", {})
    line = "y" * 16_000
    for _ in range(20):
        batch.reply(output(*[["r1", "first", 1, 5.0, "stdout", {"lines": [line] * 100}]] * 10))
    recorded = [e for e in batch.events if e.kind is EventKind.STEP_OUTPUT]
    assert sum(len(e.data["lines"]) for e in recorded) * len(line) <= 8 << 20
    markers = [e for e in batch.events if e.kind is EventKind.STEP_OUTPUT_DROPPED]
    assert markers and all(m.data["entries"] > 0 for m in markers)


async def test_a_run_ends_when_the_pass_decides_it_not_when_a_late_completion_finished() -> None:
    plan = build("p", [StepSpec(key="first", name="noop")])
    _, runs = driven(plan)
    Batch(runs, "c1", {}).command(Start("r1"))
    finished_long_ago = time.time() - 30.0  # its completion waited in the broker
    late = messages.Completion(
        "r1", "first", 1, b"\x01", None, "w", finished_long_ago - 1, finished_long_ago
    )
    batch = Batch(runs, "c1", {})
    assert batch.reply(late)
    succeeded, ended = batch.events
    assert succeeded.kind is EventKind.STEP_SUCCEEDED and succeeded.ts == finished_long_ago
    assert ended.kind is EventKind.RUN_SUCCEEDED and ended.ts == batch.now
