"""The process-wide capture of what steps print and log: attributed by the step context,
passed on to the real streams, installed once however many workers use it."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any

from aexec import capture, context
from aexec.cli.display import LiveDisplay


class Recorder:
    def __init__(self) -> None:
        self.written: list[tuple[str, str]] = []
        self.records: list[str] = []

    def progress(self, fraction: float | None, message: str | None) -> None:
        return None

    def log(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())

    def write(self, stream: str, text: str) -> None:
        self.written.append((stream, text))

    def emit(self, name: str, data: Any) -> None:
        return None


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def in_step(recorder: Recorder, fn: Any, *args: Any) -> None:
    context.run_with(context.StepContext("r1", "k", 1, "n", recorder), fn, *args)


def test_prints_in_a_step_are_captured_and_still_reach_the_real_stream(
    capsys: Any,
) -> None:
    real = sys.stdout
    capture.install(logging.INFO)
    capture.install(logging.INFO)  # a second worker in the process shares it
    try:
        recorder = Recorder()
        in_step(recorder, print, "inside")
        print("outside")
        capture.uninstall()
        assert isinstance(sys.stdout, capture.StepStream)  # one user left
    finally:
        capture.uninstall()
    assert sys.stdout is real
    assert recorder.written == [("stdout", "inside"), ("stdout", "\n")]
    assert capsys.readouterr().out == "inside\noutside\n"


def test_a_thread_the_step_starts_itself_is_not_attributed_to_it() -> None:
    capture.install(logging.INFO)
    try:
        recorder = Recorder()

        def step() -> None:
            thread = threading.Thread(target=print, args=("from a thread",))
            thread.start()
            thread.join()

        in_step(recorder, step)
    finally:
        capture.uninstall()
    assert recorder.written == []


def test_log_records_of_a_step_at_the_level_and_above_are_captured(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="tests.capture")
    before = list(logging.getLogger().handlers)
    capture.install(logging.INFO)
    try:
        recorder = Recorder()
        logger = logging.getLogger("tests.capture")
        in_step(recorder, logger.info, "kept")
        in_step(recorder, logger.debug, "below the level")
        logger.warning("outside a step")
    finally:
        capture.uninstall()
    assert recorder.records == ["kept"]
    assert logging.getLogger().handlers == before  # the last uninstall took it away


def test_steps_prints_are_captured_under_a_live_progress_display() -> None:
    real = sys.stdout
    capture.install(logging.INFO)
    try:
        recorder = Recorder()
        terminal = Terminal()
        with LiveDisplay(terminal, title="run", total=2):
            assert type(sys.stdout).__name__ == "StepStream"  # outermost, around rich's
            in_step(recorder, print, "under the bar")
        assert isinstance(sys.stdout, capture.StepStream)
    finally:
        capture.uninstall()
    assert sys.stdout is real
    assert ("stdout", "under the bar") in recorder.written
    assert "under the bar" in terminal.getvalue()  # rich printed it above its bar
