"""The shared names and limits of the wire: run ids that can travel and be stored."""

from __future__ import annotations

import pytest

from aexec.errors import CodecError
from aexec.wire import MAX_RUN_ID, check_run_id, reply_queue


@pytest.mark.parametrize("run_id", ["a", "0f" * 16, "nightly-2026-01-02 #3", "é" * MAX_RUN_ID])
def test_a_printable_run_id_of_at_most_255_characters_passes(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize(
    ("run_id", "why"),
    [
        ("x" * (MAX_RUN_ID + 1), "at most 255 characters; this one has 256"),
        ("x" * 8000, "at most 255 characters"),
        ("nul\x00byte", "no control characters"),
        ("line\nbreak", "no control characters"),
        ("", "non-empty string"),
        (42, "non-empty string"),
    ],
)
def test_an_absurd_run_id_is_a_one_line_codec_error(run_id: object, why: str) -> None:
    with pytest.raises(CodecError, match=why) as raised:
        check_run_id(run_id)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 200


def test_a_coordinators_reply_queue_is_named_after_it() -> None:
    assert reply_queue("c1") == "reply.c1"
