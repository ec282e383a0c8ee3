"""A worker's output buffer: bounded per attempt and per worker, dropping with a marker,
waking the worker once per flush."""

from __future__ import annotations

import logging
import sys

from aexec import messages
from aexec.output import OutputBuffer, OutputLimits, encode_output


def step_message(
    key: str = "k", attempt: int = 1, reply_to: str = "replies"
) -> messages.StepMessage:
    return messages.StepMessage("r1", key, attempt, "n", b"", [], None, reply_to)


def buffer(**limits: object) -> tuple[OutputBuffer, list[bool]]:
    wakes: list[bool] = []
    return OutputBuffer(OutputLimits(**limits), wakes.append), wakes  # type: ignore[arg-type]


def lines_of(entries: list[list[object]]) -> list[str]:
    return [line for e in entries if e[4] == "stdout" for line in e[5]["lines"]]  # type: ignore[index]


def test_lines_are_cut_at_newlines_and_consecutive_ones_share_an_entry() -> None:
    out, wakes = buffer()
    attempt = out.attempt(step_message())
    attempt.write("stdout", "a\nb")
    attempt.write("stdout", "c\nd\n")
    attempt.write("stderr", "e\n")
    attempt.write("stdout", "partial")
    taken = out.take()
    (entries,) = taken.values()
    assert [(e[4], e[5]) for e in entries] == [
        ("stdout", {"lines": ["a", "bc", "d"]}),
        ("stderr", {"lines": ["e"]}),
    ]
    assert wakes == [False]  # once per flush, not per line
    reply_to, last = attempt.finish()
    assert (reply_to, lines_of(last)) == ("replies", ["partial"])
    attempt.write("stdout", "after the end\n")  # a thread the step left behind
    assert out.take() == {} and out.pending == 0


def test_an_attempt_half_way_to_its_bound_asks_for_a_flush_at_once() -> None:
    out, wakes = buffer(attempt_pending=1000)
    attempt = out.attempt(step_message())
    for n in range(100):
        attempt.write("stdout", f"line {n:04d}\n")
    assert wakes[:2] == [False, True]  # soon, then now: once each per flush
    out.take()
    attempt.write("stdout", "again\n")
    assert wakes[2:] == [False]


def test_progress_keeps_the_latest_report_of_a_flush() -> None:
    out, _ = buffer()
    attempt = out.attempt(step_message())
    attempt.progress(0.1, "a")
    attempt.progress(0.2, "b")
    (entries,) = out.take().values()
    assert [e[5] for e in entries] == [{"fraction": 0.2, "message": "b"}]


def test_an_attempt_over_its_share_between_flushes_drops_lines_with_a_marker() -> None:
    out, _ = buffer(attempt_pending=1000)
    attempt = out.attempt(step_message())
    for n in range(500):
        attempt.write("stdout", f"line {n:04d}\n")
    (entries,) = out.take().values()
    kept = lines_of(entries)
    assert kept == [f"line {n:04d}" for n in range(len(kept))] and 0 < len(kept) < 500
    marker = entries[-1]
    assert marker[4] == "dropped"
    assert marker[5]["entries"] == 500 - len(kept)
    assert "within 0.25 s" in marker[5]["reason"]
    attempt.write("stdout", "next flush\n")  # the share is per flush
    (entries,) = out.take().values()
    assert lines_of(entries) == ["next flush"]


def test_an_attempt_past_its_total_drops_everything_after() -> None:
    out, _ = buffer(attempt_total=2000, attempt_pending=1500)
    attempt = out.attempt(step_message())
    for _ in range(20):
        for n in range(10):
            attempt.write("stdout", f"line {n}\n")
        out.take()
    attempt.write("stdout", "too late\n")
    (entries,) = out.take().values()
    assert lines_of(entries) == []
    assert "more than 2000 bytes of output in all" in entries[-1][5]["reason"]


def test_the_worker_holds_a_bounded_amount_whatever_its_attempts_write() -> None:
    out, _ = buffer(pending=10_000, attempt_pending=8_000)
    attempts = [out.attempt(step_message(f"k{i}")) for i in range(5)]
    for attempt in attempts:
        for n in range(1000):
            attempt.write("stdout", f"{attempt.key[1]} {n}\n")
    assert out.pending <= 10_000
    taken = out.take()["replies"]
    markers = [e for e in taken if e[4] == "dropped"]
    assert {m[1] for m in markers} == {f"k{i}" for i in range(5)}
    assert any("the worker held 10000 bytes" in m[5]["reason"] for m in markers)
    assert out.pending == 0


def test_a_flush_is_one_message_per_coordinator() -> None:
    out, _ = buffer()
    out.attempt(step_message("a", reply_to="c1")).write("stdout", "1\n")
    out.attempt(step_message("b", reply_to="c2")).write("stdout", "2\n")
    out.attempt(step_message("c", reply_to="c1")).write("stdout", "3\n")
    taken = out.take()
    assert sorted(taken) == ["c1", "c2"]
    assert [e[1] for e in taken["c1"]] == ["a", "c"]
    body = encode_output("w", "i", taken["c1"])
    assert body is not None
    decoded = messages.decode(body)
    assert isinstance(decoded, messages.Output) and decoded.entries == taken["c1"]


def test_log_records_with_bad_arguments_or_a_traceback_are_kept_as_text() -> None:
    out, _ = buffer()
    attempt = out.attempt(step_message())
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "bad %d", ("text",), None)
    attempt.log(bad)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    attempt.log(failed)
    (entries,) = out.take().values()
    assert entries[0][5] == {"level": "INFO", "logger": "x", "message": "bad %d"}
    assert entries[1][5]["message"].startswith("failed\nTraceback")
    assert "ValueError: boom" in entries[1][5]["message"]


def test_text_msgpack_refuses_is_escaped_rather_than_lost() -> None:
    entries: list[list[object]] = [["r1", "k", 1, 1.0, "stdout", {"lines": ["ok", "bad \udcff"]}]]
    body = encode_output("w", "i", entries)  # type: ignore[arg-type]
    assert body is not None
    decoded = messages.decode(body)
    assert isinstance(decoded, messages.Output)
    assert decoded.entries[0][5]["lines"] == ["ok", "bad \\udcff"]


async def test_the_worker_s_own_log_lines_about_an_attempt_name_it() -> None:
    import asyncio

    from aexec import context
    from aexec.log import StepContextFilter

    def stamped() -> logging.LogRecord:
        record = logging.LogRecord("aexec.worker", logging.WARNING, __file__, 1, "m", (), None)
        StepContextFilter().filter(record)
        return record

    async def attempt_task() -> logging.LogRecord:
        context.bind_attempt("0123456789abcdef", "render", 2)
        return stamped()

    inside = await asyncio.create_task(attempt_task())
    assert (inside.run_id, inside.step_key, inside.attempt) == ("0123456789abcdef", "render", 2)  # type: ignore[attr-defined]
    assert inside.step_context == " [01234567 render#2]"  # type: ignore[attr-defined]
    outside = stamped()  # the binding ended with its task
    assert (outside.run_id, outside.step_context) == ("-", "")  # type: ignore[attr-defined]
