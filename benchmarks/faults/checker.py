"""The invariants, checked against what the campaign observed: a pure function of
:class:`~benchmarks.faults.model.Observations`, one small check per rule.

Violation kinds, and exactly what each one checks:

``unfinished``
    A run in the store (submitted by the campaign or not) is not succeeded, failed or
    cancelled after the quiet period.
``lost-submission``
    A run whose submission the broker confirmed is not in the store at all.
``outcome-twice``
    A (run, step, attempt) has more than one outcome event (``step_succeeded``,
    ``step_failed``, ``step_retrying``).
``success-twice``
    A (run, step) has more than one ``step_succeeded``.
``dispatch-twice``
    A (run, step, attempt) has more than one ``step_dispatched``: two coordinators (or one
    coordinator twice) sent the same attempt.
``attempt-ran-twice``
    The ledger shows step code started more than once for one (run, step, attempt),
    leaving out the attempts whose step message the campaign itself published twice.
``step-ran-again``
    The dependents-run-once rule: a step's code ran for attempts ``a < b`` (ledger) while
    the store records no ``step_retrying`` for attempt ``a`` — nothing failed and no worker
    was declared lost, yet the step ran again (e.g. a second dispatch of a dependent, or a
    re-dispatch of a step that was still running).  Same exclusion as above.
``ran-after-end``
    Step code started more than ``slack`` seconds after its run had finished or been
    cancelled (ledger start time vs the run's ``finished_at``).  Same exclusion.
``ran-though-cancelled``
    Step code ran at all for a step that had not been dispatched when its run was
    cancelled (no ``step_dispatched`` before ``run_cancelled``).
``cancel-ignored``
    The campaign cancelled a run (and the request went out) more than ``slack`` seconds
    before it ended, yet it ended other than cancelled.
``wrong-outcome``
    A run that nobody cancelled ended other than expected: a wrong status, other failed
    steps than the ones meant to fail, a step downstream of those not skipped, or any
    other step not succeeded; or it ended cancelled.
``wrong-result``
    A succeeded run's result is not the one its pipeline computes (or cannot be read).
``process-crashed``
    A worker or coordinator exited on its own after it was ready.
``unclean-exit``
    A process asked to stop with SIGTERM (at the end, or replaced by a fault) did not
    exit with status 0 within the grace period; a draining worker that never finishes.
``innocent-dead-letter``
    The dead-letter queue holds a message the campaign did not inject as poison.
``poison-not-dead-lettered``
    A poison message sent to a queue that still had a consumer at the end never reached
    the dead-letter queue (and, for a submission with an absurd id, no finished run has
    that id either).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from benchmarks.faults.ledger import Execution
from benchmarks.faults.model import (
    OUTCOMES,
    Observations,
    ProcessFate,
    RunView,
    Violation,
)

KINDS = (
    "unfinished",
    "lost-submission",
    "outcome-twice",
    "success-twice",
    "dispatch-twice",
    "attempt-ran-twice",
    "step-ran-again",
    "ran-after-end",
    "ran-though-cancelled",
    "cancel-ignored",
    "wrong-outcome",
    "wrong-result",
    "process-crashed",
    "unclean-exit",
    "innocent-dead-letter",
    "poison-not-dead-lettered",
)


def check(obs: Observations) -> list[Violation]:
    """Every violation found, sorted by kind then subject."""
    found: list[Violation] = []
    for rule in (
        finished,
        recorded_once,
        executed_once,
        nothing_after_the_end,
        expected_outcomes,
        processes,
        dead_letters,
    ):
        found.extend(rule(obs))
    return sorted(found, key=lambda v: (KINDS.index(v.kind), v.subject, v.detail))


# -- every run ends --------------------------------------------------------------------


def finished(obs: Observations) -> Iterator[Violation]:
    for run in obs.runs.values():
        if not run.finished:
            waiting = [
                f"{s.key}={s.status}/{s.attempts}"
                for s in run.steps.values()
                if not _done(s.status)
            ]
            last = run.events[-1] if run.events else None
            seen = f"; last event {last.kind} {last.step or ''} at {last.ts:.3f}" if last else ""
            yield Violation(
                "unfinished",
                run.run_id,
                f"{run.pipeline} still {run.status}; unfinished steps: "
                f"{', '.join(waiting) or 'none'}{seen}",
            )
    for sub in obs.submissions:
        if sub.run_id not in obs.runs:
            yield Violation(
                "lost-submission",
                sub.run_id,
                f"{sub.pipeline} (tag {sub.tag}) confirmed by the broker at {sub.at:.3f}, "
                "never in the store",
            )


def _done(status: str) -> bool:
    return status in ("succeeded", "failed", "skipped", "cancelled")


# -- recorded once ---------------------------------------------------------------------


def recorded_once(obs: Observations) -> Iterator[Violation]:
    for run in obs.runs.values():
        outcomes: dict[tuple[str, int], list[str]] = defaultdict(list)
        successes: dict[str, list[str]] = defaultdict(list)
        dispatches: Counter[tuple[str, int]] = Counter()
        for e in run.events:
            if e.step is None:
                continue
            if e.kind in OUTCOMES:
                outcomes[(e.step, e.attempt)].append(f"{e.kind}#{e.seq}")
            if e.kind == "step_succeeded":
                successes[e.step].append(f"attempt {e.attempt} #{e.seq} by {e.data.get('worker')}")
            elif e.kind == "step_dispatched":
                dispatches[(e.step, e.attempt)] += 1
        for (step, attempt), kinds in outcomes.items():
            if len(kinds) > 1:
                yield Violation(
                    "outcome-twice",
                    run.run_id,
                    f"step {step} attempt {attempt} recorded {len(kinds)} outcomes: "
                    f"{', '.join(kinds)}{_drivers(run)}",
                )
        for step, recorded in successes.items():
            if len(recorded) > 1:
                yield Violation(
                    "success-twice",
                    run.run_id,
                    f"step {step} recorded {len(recorded)} successes: {'; '.join(recorded)}"
                    f"{_drivers(run)}",
                )
        for (step, attempt), count in dispatches.items():
            if count > 1:
                yield Violation(
                    "dispatch-twice",
                    run.run_id,
                    f"step {step} attempt {attempt} dispatched {count} times{_drivers(run)}",
                )


def _drivers(run: RunView) -> str:
    """The coordinators that started or resumed the run, for the reader of a violation."""
    drivers = [
        f"{e.kind.removeprefix('run_')} by {e.data.get('coordinator')} at {e.ts:.3f}"
        for e in run.events
        if e.kind in ("run_started", "run_resumed")
    ]
    return f" (run {'; '.join(drivers)})" if drivers else ""


# -- executed once ---------------------------------------------------------------------


def executed_once(obs: Observations) -> Iterator[Violation]:
    fates = {f.pid: f for f in obs.processes}
    by_attempt: dict[tuple[str, str, int], list[Execution]] = defaultdict(list)
    for e in obs.executions:
        key = (e.run_id, e.step, e.attempt)
        if key not in obs.duplicated:
            by_attempt[key].append(e)
    for (run_id, step, attempt), runs in by_attempt.items():
        if len(runs) > 1:
            starts = "; ".join(_where(e, fates) for e in runs)
            yield Violation(
                "attempt-ran-twice",
                run_id,
                f"step {step} attempt {attempt} started {len(runs)} times: {starts}",
            )
    attempts: dict[tuple[str, str], dict[int, Execution]] = defaultdict(dict)
    for (run_id, step, attempt), runs in by_attempt.items():
        attempts[(run_id, step)][attempt] = runs[0]
    for (run_id, step), ran in attempts.items():
        run = obs.runs.get(run_id)
        if run is None or len(ran) < 2:
            continue
        retried = {e.attempt for e in run.events if e.step == step and e.kind == "step_retrying"}
        last = max(ran)
        for attempt in sorted(ran):
            if attempt != last and attempt not in retried:
                later = min(a for a in ran if a > attempt)
                yield Violation(
                    "step-ran-again",
                    run_id,
                    f"step {step}: attempt {attempt} ran ({_where(ran[attempt], fates)}) and "
                    f"so did attempt {later} ({_where(ran[later], fates)}), with no failure "
                    f"recorded for attempt {attempt}{_history(run, step)}",
                )


def _where(e: Execution, fates: dict[int, ProcessFate]) -> str:
    fate = fates.get(e.pid)
    how = ""
    if fate is not None and fate.how != "stopped" and fate.signalled_at is not None:
        how = f", {fate.how} at {fate.signalled_at:.3f}"
    return f"{e.worker} pid {e.pid} at {e.started:.3f}{how}"


def _history(run: RunView, step: str) -> str:
    """The step's dispatches, outcomes and the run's takeovers, in order."""
    shown = [
        f"{e.kind}{'' if e.step is None else f' {e.attempt}'} {e.ts:.3f}"
        for e in run.events
        if (e.step == step and (e.kind in OUTCOMES or e.kind == "step_dispatched"))
        or e.kind == "run_resumed"
    ]
    return f" [{', '.join(shown)}]" if shown else ""


# -- nothing after the end -------------------------------------------------------------


def nothing_after_the_end(obs: Observations) -> Iterator[Violation]:
    for e in obs.executions:
        run = obs.runs.get(e.run_id)
        if run is None:
            continue
        if run.status == "cancelled" and e.step not in _dispatched_before_cancel(run):
            yield Violation(
                "ran-though-cancelled",
                run.run_id,
                f"step {e.step} attempt {e.attempt} started at {e.started:.3f} on {e.worker} "
                f"(pid {e.pid}), though it was still pending when the run was cancelled "
                f"at {run.finished_at or 0:.3f}",
            )
            continue
        if (e.run_id, e.step, e.attempt) in obs.duplicated:
            continue
        if run.finished_at is not None and e.started > run.finished_at + obs.slack:
            yield Violation(
                "ran-after-end",
                run.run_id,
                f"step {e.step} attempt {e.attempt} started at {e.started:.3f} on {e.worker} "
                f"(pid {e.pid}), {e.started - run.finished_at:.2f} s after the run ended "
                f"{run.status}",
            )


def _dispatched_before_cancel(run: RunView) -> set[str]:
    dispatched: set[str] = set()
    for e in run.events:
        if e.kind == "run_cancelled":
            break
        if e.kind == "step_dispatched" and e.step is not None:
            dispatched.add(e.step)
    return dispatched


# -- the outcome each run should have --------------------------------------------------


def expected_outcomes(obs: Observations) -> Iterator[Violation]:
    for run_id, run in obs.runs.items():
        expected = obs.expected.get(run_id)
        if expected is None or not run.finished:
            continue
        cancel = obs.cancels.get(run_id)
        if cancel is not None and run.status == "cancelled":
            continue
        if (
            cancel is not None
            and cancel.sent
            and run.finished_at is not None
            and run.finished_at > cancel.at + obs.slack
        ):
            yield Violation(
                "cancel-ignored",
                run_id,
                f"{run.pipeline} cancelled at {cancel.at:.3f}, ended {run.status} at "
                f"{run.finished_at:.3f}{_drivers(run)}",
            )
            continue
        if run.status == "cancelled":
            yield Violation("wrong-outcome", run_id, f"{run.pipeline} cancelled by nobody")
            continue
        yield from _natural_outcome(run, expected.status, expected.failing)
        if run.status == "succeeded" == expected.status:
            if run.result_error is not None:
                yield Violation("wrong-result", run_id, f"{run.pipeline}: {run.result_error}")
            elif run.result != expected.result:
                yield Violation(
                    "wrong-result",
                    run_id,
                    f"{run.pipeline} returned {run.result!r:.100}, expected "
                    f"{expected.result!r:.100}",
                )


def _natural_outcome(run: RunView, status: str, failing: frozenset[str]) -> Iterator[Violation]:
    downstream = _downstream(run.deps, failing)
    wrong: list[str] = []
    for step in run.steps.values():
        if step.key in failing:
            want = "failed"
        elif step.key in downstream:
            want = "skipped"
        else:
            want = "succeeded"
        if step.status != want:
            why = f" ({step.error})" if step.error else ""
            wrong.append(f"{step.key} {step.status}/{step.attempts}, not {want}{why}")
    if run.status != status or wrong:
        yield Violation(
            "wrong-outcome",
            run.run_id,
            f"{run.pipeline} ended {run.status} (expected {status}); "
            f"{'; '.join(wrong) or 'every step as expected'}",
        )


def _downstream(deps: dict[str, tuple[str, ...]], roots: Iterable[str]) -> set[str]:
    dependents: dict[str, list[str]] = defaultdict(list)
    for step, upstream in deps.items():
        for u in upstream:
            dependents[u].append(step)
    found: set[str] = set()
    stack = [d for r in roots for d in dependents[r]]
    while stack:
        step = stack.pop()
        if step not in found:
            found.add(step)
            stack.extend(dependents[step])
    return found


# -- processes -------------------------------------------------------------------------


def processes(obs: Observations) -> Iterator[Violation]:
    for fate in obs.processes:
        subject = f"{fate.slot}[pid {fate.pid}]"
        if fate.how == "crashed":
            yield Violation(
                "process-crashed",
                subject,
                f"exited with status {fate.code} at {fate.ended or 0:.3f} on its own "
                f"(log {fate.log_file})",
            )
        elif fate.how in ("stopped", "replaced") and (fate.overran or fate.code != 0):
            asked = f"SIGTERM at {fate.signalled_at or 0:.3f}"
            if fate.how == "replaced":
                asked += " (replaced by a new process under its name)"
            what = (
                "had not exited when the grace period ended (killed)"
                if fate.overran
                else f"exited with status {fate.code}"
            )
            yield Violation("unclean-exit", subject, f"{asked}: {what} (log {fate.log_file})")


# -- dead letters ----------------------------------------------------------------------


def dead_letters(obs: Observations) -> Iterator[Violation]:
    poison = {p.digest for p in obs.poison}
    arrived = {d.digest for d in obs.dead_letters}
    for letter in obs.dead_letters:
        if letter.digest not in poison:
            yield Violation(
                "innocent-dead-letter",
                letter.queue,
                f"{letter.summary} dead-lettered ({letter.reason})",
            )
    for p in obs.poison:
        if p.digest in arrived or not p.consumed:
            continue
        run = obs.runs.get(p.run_id) if p.run_id is not None else None
        if run is not None and run.finished:
            continue
        yield Violation(
            "poison-not-dead-lettered",
            p.queue,
            f"{p.kind} poison ({p.variant}) published at {p.at:.3f} never reached the "
            "dead-letter queue",
        )
