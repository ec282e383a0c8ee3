"""Wire messages: every kind round-trips; anything malformed is a CodecError, nothing else."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aexec import codec, messages
from aexec.errors import CodecError
from aexec.messages import (
    AttemptLost,
    Completion,
    Completions,
    Control,
    Events,
    Heartbeat,
    Output,
    Progress,
    RunEnded,
    StepMessage,
    Submit,
    WorkerInfo,
)
from aexec.types import ErrorInfo

STEP = StepMessage(
    run_id="run-1",
    step_key="render_2",
    attempt=3,
    name="render",
    call=codec.encode([[codec.Slot(0)], {"size": 512}]),
    inputs=[codec.encode(b"scene"), codec.encode(codec.ObjectRef("outputs/r/s/1"))],
    timeout=600.0,
    reply_to="aexec.replies.coordinator-1",
)
DONE_OK = Completion("run-1", "render_2", 3, codec.encode(b"png"), None, "w1", 10.0, 12.5)
DONE_ERROR = Completion(
    "run-1", "render_2", 3, None, ErrorInfo("ValueError", "bad", "Traceback...", False), "w1",
    10.0, 12.5,
)  # fmt: skip

EXAMPLES: dict[str, Any] = {
    "step": STEP,
    "step without timeout or inputs": StepMessage("r", "k", 1, "n", b"\x92\x90\x80", [], None, "q"),
    "step traced": StepMessage(
        "r", "k", 1, "n", b"", [], 1.5, "q", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    ),
    "completion with output": DONE_OK,
    "completion with error": DONE_ERROR,
    "completion with empty output": Completion("r", "k", 0, b"", None, "w", 0.0, 0.0),
    "completions": Completions(
        [DONE_OK, DONE_ERROR, Completion("r2", "k", 1, b"", None, "w", 0, 1)]
    ),
    "progress": Progress("run-1", "k", 1, "w1", 11.0, 0.5, "half way"),
    "progress started": Progress("run-1", "k", 1, "w1", 11.0),
    "output": Output(
        "w1",
        "a1b2",
        12.0,
        [
            ["run-1", "k", 1, 11.5, "stdout", {"lines": ["hello", "world"]}],
            ["run-1", "k", 1, 11.6, "log", {"level": "INFO", "logger": "x", "message": "m"}],
            ["run-2", "j", 3, 11.7, "event", {"name": "rows", "data": {"n": 3}}],
        ],
    ),
    "output empty": Output("w1", "", 12.0, []),
    "heartbeat": Heartbeat("w1", 13.0, [("run-1", "a", 1), ("run-2", "b", 4)]),
    "heartbeat idle": Heartbeat("w1", 13.0, []),
    "attempt lost, redelivered": AttemptLost("run-1", "k", 2, "w1", "redelivered"),
    "attempt lost, child crashed": AttemptLost("run-1", "k", 1, "w1", "crashed"),
    "run ended": RunEnded("run-1", "cancelled", 14.0),
    "control ping": Control("ping", None, "reply-queue"),
    "control terminate": Control("terminate", "w1"),
    "control cancel": Control("cancel", None, None, "run-1"),
    "control cancel with a reason": Control("cancel", None, None, "run-1", "not needed"),
    "worker info": WorkerInfo("w1", "host", 1234, ["default", "gpu"], 2, 0.5, 100.0),
    "submit": Submit("run-1", b"plan bytes", 5, "client-queue"),
    "submit without notify": Submit("run-1", b"", 0, None),
    "submit with tags": Submit("run-1", b"plan", 1, None, {"team": "data", "env": ""}),
    "events": Events("run-1", [[1, 10.0, "step_succeeded", "a", 1, {"k": "v"}, b"out"]]),
    "no events": Events("run-1", []),
}


@pytest.mark.parametrize("message", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_every_message_kind_round_trips(message: Any) -> None:
    decoded = messages.decode(bytes(message.encode()))  # the wire's path
    assert decoded == message
    assert type(decoded) is type(message)


def test_integer_times_decode_as_floats() -> None:
    body = msgpack.packb([1, "done", "r", "k", 1, b"", None, "w", 10, 12])
    decoded = messages.decode(body)
    assert isinstance(decoded, Completion)
    assert (decoded.started_at, decoded.finished_at) == (10.0, 12.0)
    assert isinstance(decoded.started_at, float)


def test_a_step_message_carries_no_dag() -> None:
    # One attempt of one step: a small array whose size does not depend on the plan.
    assert len(msgpack.unpackb(STEP.encode())) == 10


def test_a_malformed_error_record_still_reports_a_failure() -> None:
    body = msgpack.packb([1, "done", "r", "k", 1, None, ["only", "two"], "w", 1.0, 2.0])
    decoded = messages.decode(body)
    assert isinstance(decoded, Completion)
    assert decoded.output is None
    assert decoded.error is not None
    assert decoded.error.type == "MalformedError"
    assert decoded.error.retryable is False


def packed(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def step_fields(**changes: Any) -> list[Any]:
    fields = {
        "v": 1,
        "kind": "step",
        "run_id": "r",
        "key": "k",
        "attempt": 1,
        "name": "n",
        "call": b"",
        "inputs": [],
        "timeout": None,
        "reply_to": "q",
    }
    fields.update(changes)
    return list(fields.values())


def done_fields(**changes: Any) -> list[Any]:
    fields = {
        "v": 1,
        "kind": "done",
        "run_id": "r",
        "key": "k",
        "attempt": 1,
        "output": b"",
        "error": None,
        "worker": "w",
        "started": 1.0,
        "finished": 2.0,
    }
    fields.update(changes)
    return list(fields.values())


def test_the_field_helpers_build_valid_messages() -> None:
    assert isinstance(messages.decode(packed(*step_fields())), StepMessage)
    assert isinstance(messages.decode(packed(*done_fields())), Completion)


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "not msgpack": b"\xc1",
    "truncated": STEP.encode()[:-4],
    "trailing bytes": DONE_OK.encode() + b"\x00",
    "invalid utf-8": b"\x92\x01\xa4\xff\xfe\xfd\xfc",  # [1, <4 bytes of bad UTF-8>]
    "not a list": msgpack.packb({"v": 1, "kind": "step"}),
    "a bare string": msgpack.packb("step"),
    "too short": packed(1),
    "no kind": packed(),
    "wrong version": packed(*step_fields(v=2)),
    "version as a string": packed(*step_fields(v="1")),
    "unknown kind": packed(*step_fields(kind="launch")),
    "kind of wrong type": packed(*step_fields(kind=["step"])),
    "wrong length": packed(*step_fields()[:-1]),
    "one field too many": packed(*step_fields(), "extra"),
    "run id not a string": packed(*step_fields(run_id=5)),
    "step key not a string": packed(*step_fields(key=b"k")),
    "attempt not an int": packed(*step_fields(attempt="1")),
    "attempt a bool": packed(*step_fields(attempt=True)),
    "attempt negative": packed(*step_fields(attempt=-1)),
    "attempt a float": packed(*step_fields(attempt=1.0)),
    "name not a string": packed(*step_fields(name=None)),
    "call not bytes": packed(*step_fields(call="call")),
    "inputs not a list": packed(*step_fields(inputs=b"")),
    "inputs not bytes": packed(*step_fields(inputs=[b"", "x"])),
    "timeout not a number": packed(*step_fields(timeout="10")),
    "timeout a bool": packed(*step_fields(timeout=True)),
    "reply_to not a string": packed(*step_fields(reply_to=None)),
    "extension in the envelope": packed(*step_fields(call=msgpack.ExtType(5, b"x"))),
    "extension nested in the envelope": packed(*step_fields(inputs=[msgpack.ExtType(1, b"")])),
    "codec extension in the envelope": packed(
        *step_fields(run_id=msgpack.ExtType(codec.EXT_REF, b"k"))
    ),
    "timestamp extension in the envelope": packed(*step_fields(run_id=msgpack.Timestamp(1, 0))),
    "non-string map key": msgpack.packb([1, "step", {1: 2}]),
    "completion with output and error": packed(
        *done_fields(output=b"", error=["E", "m", "", True])
    ),
    "completion with neither output nor error": packed(*done_fields(output=None, error=None)),
    "completion output not bytes": packed(*done_fields(output="text")),
    "completion worker not a string": packed(*done_fields(worker=1)),
    "completion started not a number": packed(*done_fields(started="now")),
    "completion finished a bool": packed(*done_fields(finished=False)),
    "progress message not a string": packed(1, "progress", "r", "k", 1, "w", 1.0, 0.5, 5),
    "progress fraction not a number": packed(1, "progress", "r", "k", 1, "w", 1.0, "half", None),
    "progress ts missing": packed(1, "progress", "r", "k", 1, "w", None, None, None),
    "heartbeat running not a list": packed(1, "heartbeat", "w", 1.0, "r"),
    "heartbeat entry too short": packed(1, "heartbeat", "w", 1.0, [["r", "k"]]),
    "heartbeat attempt not an int": packed(1, "heartbeat", "w", 1.0, [["r", "k", "1"]]),
    "heartbeat attempt a bool": packed(1, "heartbeat", "w", 1.0, [["r", "k", True]]),
    "heartbeat attempt negative": packed(1, "heartbeat", "w", 1.0, [["r", "k", -1]]),
    "heartbeat worker not a string": packed(1, "heartbeat", None, 1.0, []),
    "control unknown command": packed(1, "control", "reboot", None, None, None),
    "control command unhashable": packed(1, "control", ["ping"], None, None, None),
    "control target not a string": packed(1, "control", "ping", 5, None, None),
    "control run id not a string": packed(1, "control", "cancel", None, None, 5),
    "attempt lost for no known reason": packed(1, "lost", "r", "k", 1, "w", "bored"),
    "attempt lost attempt negative": packed(1, "lost", "r", "k", -1, "w", "crashed"),
    "attempt lost worker missing": packed(1, "lost", "r", "k", 1, "redelivered"),
    "run ended still running": packed(1, "run_ended", "r", "running", 1.0),
    "run ended ts not a number": packed(1, "run_ended", "r", "failed", "now"),
    "submit plan not bytes": packed(1, "submit", "r", "plan", 0, None),
    "submit priority negative": packed(1, "submit", "r", b"", -1, None),
    "events not a list": packed(1, "events", "r", "x"),
    "event record too short": packed(1, "events", "r", [[1, 2.0]]),
    "worker info queues not strings": packed(1, "worker_info", "w", "h", 1, [1], 0, 0.0, 0.0),
    "worker info pid not an int": packed(1, "worker_info", "w", "h", "1", [], 0, 0.0, 0.0),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_raise_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        messages.decode(body)


def test_oversized_body_is_refused_before_decoding() -> None:
    body = bytes(messages.MAX_BODY + 1)  # would not decode anyway: the size check comes first
    with pytest.raises(CodecError, match="exceeds"):
        messages.decode(body)


def test_codec_error_names_the_problem() -> None:
    with pytest.raises(CodecError, match="attempt"):
        messages.decode(packed(*step_fields(attempt="x")))
    with pytest.raises(CodecError, match="version"):
        messages.decode(packed(*step_fields(v=9)))


# -- each message owns its encoding -------------------------------------------------------


def test_the_examples_cover_every_kind_in_the_table() -> None:
    assert {type(m).KIND for m in EXAMPLES.values()} == set(messages.KINDS)


@pytest.mark.parametrize("message", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_each_kind_reads_back_what_it_writes(message: Any) -> None:
    fields = message.to_wire()
    assert msgpack.unpackb(message.encode()) == [messages.VERSION, message.KIND, *fields]
    assert type(message).from_wire(msgpack.unpackb(packed(*fields))) == message


NAMED: dict[str, tuple[bytes, str]] = {
    "step run id": (packed(*step_fields(run_id=1)), "step message: run id"),
    "step key": (packed(*step_fields(key=1)), "step message: step key"),
    "step attempt": (packed(*step_fields(attempt=-1)), "step message: attempt"),
    "step name": (packed(*step_fields(name=1)), "step message: step name"),
    "step call": (packed(*step_fields(call="x")), "step message: call"),
    "step inputs": (packed(*step_fields(inputs=["x"])), "step message: inputs"),
    "step timeout": (packed(*step_fields(timeout="x")), "step message: timeout"),
    "step reply_to": (packed(*step_fields(reply_to=1)), "step message: reply_to"),
    "step arity": (packed(*step_fields()[:-1]), "step message: 7 fields where 9"),
    "done run id": (packed(*done_fields(run_id=1)), "done message: run id"),
    "done key": (packed(*done_fields(key=1)), "done message: step key"),
    "done attempt": (packed(*done_fields(attempt="1")), "done message: attempt"),
    "done output": (packed(*done_fields(output="x")), "done message: output"),
    "done output and error": (
        packed(*done_fields(error=["E", "m", "", True])),
        "done message: a completion has exactly one of output, error",
    ),
    "done worker": (packed(*done_fields(worker=1)), "done message: worker"),
    "done started": (packed(*done_fields(started="x")), "done message: started_at"),
    "done finished": (packed(*done_fields(finished=None)), "done message: finished_at"),
    "progress run id": (packed(1, "progress", 1, "k", 1, "w", 1.0, None, None), "run id"),
    "progress key": (packed(1, "progress", "r", 1, 1, "w", 1.0, None, None), "step key"),
    "progress attempt": (packed(1, "progress", "r", "k", "1", "w", 1.0, None, None), "attempt"),
    "progress worker": (packed(1, "progress", "r", "k", 1, 1, 1.0, None, None), "worker"),
    "progress ts": (packed(1, "progress", "r", "k", 1, "w", "x", None, None), "ts"),
    "progress fraction": (packed(1, "progress", "r", "k", 1, "w", 1.0, "x", None), "fraction"),
    "progress message": (packed(1, "progress", "r", "k", 1, "w", 1.0, None, 1), "message must"),
    "output worker": (packed(1, "output", 1, "", 1.0, []), "output message: worker"),
    "output entries": (packed(1, "output", "w", "", 1.0, {}), "entries must be a list"),
    "output entry kind": (
        packed(1, "output", "w", "", 1.0, [["r", "k", 1, 1.0, "shout", {}]]),
        "each entry must be",
    ),
    "output entry data": (
        packed(1, "output", "w", "", 1.0, [["r", "k", 1, 1.0, "log", "text"]]),
        "each entry must be",
    ),
    "output entry attempt": (
        packed(1, "output", "w", "", 1.0, [["r", "k", True, 1.0, "log", {}]]),
        "each entry must be",
    ),
    "heartbeat worker": (packed(1, "heartbeat", 1, 1.0, []), "heartbeat message: worker"),
    "heartbeat ts": (packed(1, "heartbeat", "w", "x", []), "heartbeat message: ts"),
    "heartbeat running": (packed(1, "heartbeat", "w", 1.0, [["r"]]), "message: running"),
    "control command": (packed(1, "control", "reboot", None, None, None), "command 'reboot'"),
    "control target": (packed(1, "control", "ping", 1, None, None), "control message: target"),
    "control reply_to": (packed(1, "control", "ping", None, 1, None), "message: reply_to"),
    "control run id": (packed(1, "control", "cancel", None, None, 1), "control message: run id"),
    "worker info name": (packed(1, "worker_info", 1, "h", 1, [], 0, 0.0, 0.0), "name"),
    "worker info host": (packed(1, "worker_info", "w", 1, 1, [], 0, 0.0, 0.0), "host"),
    "worker info pid": (packed(1, "worker_info", "w", "h", -1, [], 0, 0.0, 0.0), "pid"),
    "worker info queues": (packed(1, "worker_info", "w", "h", 1, "q", 0, 0.0, 0.0), "queues"),
    "worker info in_flight": (
        packed(1, "worker_info", "w", "h", 1, [], None, 0.0, 0.0),
        "worker_info message: in_flight",
    ),
    "worker info age": (
        packed(1, "worker_info", "w", "h", 1, [], 0, "x", 0.0),
        "worker_info message: heartbeat_age",
    ),
    "worker info started": (
        packed(1, "worker_info", "w", "h", 1, [], 0, 0.0, "x"),
        "worker_info message: started_at",
    ),
    "submit run id": (packed(1, "submit", 1, b"", 0, None), "submit message: run id"),
    "submit plan": (packed(1, "submit", "r", "x", 0, None), "submit message: plan"),
    "submit priority": (packed(1, "submit", "r", b"", 0.5, None), "submit message: priority"),
    "submit notify": (packed(1, "submit", "r", b"", 0, 1), "submit message: notify"),
    "events run id": (packed(1, "events", 1, []), "events message: run id"),
    "events records": (packed(1, "events", "r", [[1]]), "events message: records"),
    "unknown kind": (packed(1, "launch"), "unknown kind 'launch'"),
}


@pytest.mark.parametrize(("body", "fragment"), NAMED.values(), ids=NAMED.keys())
def test_codec_error_names_the_kind_and_the_field_at_fault(body: bytes, fragment: str) -> None:
    with pytest.raises(CodecError) as info:
        messages.decode(body)
    assert fragment in str(info.value)


def test_a_boolean_version_is_not_version_one() -> None:
    with pytest.raises(CodecError, match="version"):
        messages.decode(packed(*step_fields(v=True)))


# -- fuzzing ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999))
)
structures = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=20,
)
kinds = st.sampled_from(
    [
        "step",
        "done",
        "dones",
        "progress",
        "heartbeat",
        "control",
        "worker_info",
        "submit",
        "events",
        "x",
    ]
)
# Arrays shaped like messages (right version and kind, random fields) reach the validators.
message_like = st.builds(
    lambda version, kind, fields: [version, kind, *fields],
    st.sampled_from([1, 1, 1, 0, "1"]),
    kinds,
    st.lists(structures, max_size=10),
)


def decode_or_codec_error(body: bytes) -> None:
    try:
        message = messages.decode(body)
    except CodecError:
        return
    assert isinstance(
        message,
        StepMessage
        | Completion
        | Completions
        | Progress
        | Output
        | Heartbeat
        | AttemptLost
        | RunEnded
        | Control
        | WorkerInfo
        | Submit
        | Events,
    )
    # Anything accepted encodes again to a body that decodes to the same message.
    again = messages.decode(bytes(message.encode()))
    assert repr(again) == repr(message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_codec_error(body: bytes) -> None:
    decode_or_codec_error(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures | message_like)
def test_arbitrary_msgpack_structures_decode_or_raise_codec_error(value: Any) -> None:
    decode_or_codec_error(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(EXAMPLES.values())), st.data())
def test_mutated_valid_messages_decode_or_raise_codec_error(
    message: Any, data: st.DataObject
) -> None:
    body = bytearray(message.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decode_or_codec_error(bytes(body[:cut]))


@pytest.mark.parametrize(
    "message",
    [
        Completion("r", "k", 1, b"\xc0", None, "w", 1.0, 2.0, "a1b2"),
        Progress("r", "k", 1, "w", 1.0, 0.5, "half", "a1b2"),
        Heartbeat("w", 1.0, [("r", "k", 1)], "a1b2"),
    ],
)
def test_a_workers_instance_id_travels_and_a_worker_that_predates_it_is_still_understood(
    message: Any,
) -> None:
    assert messages.decode(bytes(message.encode())) == message
    older = msgpack.packb([messages.VERSION, message.KIND, *message.to_wire()[:-1]])
    assert messages.decode(older) == dataclasses.replace(message, instance="")
    newer = msgpack.packb([messages.VERSION, message.KIND, *message.to_wire(), "extra"])
    with pytest.raises(CodecError, match="fields where"):
        messages.decode(newer)


def test_a_submit_without_tags_has_the_four_fields_earlier_coordinators_read() -> None:
    assert Submit("run-1", b"p", 0, None).to_wire() == ["run-1", b"p", 0, None]
    assert messages.decode(Submit("run-1", b"p", 0, None, {"a": "b"}).encode()) == Submit(
        "run-1", b"p", 0, None, {"a": "b"}
    )


@pytest.mark.parametrize(
    "tags", [{"": "x"}, {"k": 1}, {"a=b": "c"}, ["k", "v"], {f"k{i}": "" for i in range(21)}]
)
def test_a_submit_with_malformed_tags_is_refused(tags: Any) -> None:
    body = msgpack.packb([messages.VERSION, Submit.KIND, "run-1", b"p", 0, None, tags])
    with pytest.raises(CodecError, match="tag"):
        messages.decode(body)


# -- coalesced completions -----------------------------------------------------------------


def test_a_completions_body_built_from_packed_items_decodes_to_those_completions() -> None:
    items = [DONE_OK, DONE_ERROR]
    body = messages.completions_body([messages.pack_completion(c) for c in items], items)
    assert body == Completions(items).encode()
    assert messages.decode(bytes(body)) == Completions(items)
    assert messages.decode(body) == Completions(items)


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([], "items must be a non-empty list"),
        ("not a list", "items must be a non-empty list"),
        ([DONE_OK.to_wire(), "x"], "item 1 must be a completion's fields"),
        ([DONE_OK.to_wire(), DONE_OK.to_wire()[:3]], "item 1 has 3 fields"),
        ([[*DONE_OK.to_wire()[:2], "three", *DONE_OK.to_wire()[3:]]], "item 0: attempt"),
    ],
)
def test_a_malformed_completions_message_is_a_codec_error_naming_the_item(
    items: Any, problem: str
) -> None:
    with pytest.raises(CodecError, match=f"malformed dones message: {problem}"):
        messages.decode(packed(messages.VERSION, "dones", items))


# -- bodies handed over in the process ---------------------------------------------------


def test_a_body_handed_over_in_the_process_decodes_to_the_message_it_was_encoded_from() -> None:
    step = STEP
    body = step.encode()
    assert isinstance(body, messages.Carried)
    assert bytes(body) == msgpack.packb([messages.VERSION, "step", *step.to_wire()])
    assert messages.decode(body) is step  # not unpacked and validated again
    assert messages.decode(bytes(body)) == step  # the bytes alone: the wire's path
    done = DONE_OK.encode()
    assert messages.decode(done) is DONE_OK
    both = messages.completions_body([messages.pack_completion(c) for c in [DONE_OK]], [DONE_OK])
    assert messages.decode(both) == Completions([DONE_OK])


def test_a_handed_over_body_over_the_size_limit_is_refused_as_on_the_wire() -> None:
    huge = dataclasses.replace(DONE_OK, output=b"x" * (messages.MAX_BODY + 1))
    body = huge.encode()
    assert isinstance(body, messages.Carried)
    for handed in (body, bytes(body)):
        with pytest.raises(CodecError, match="exceeds the"):
            messages.decode(handed)


def test_only_step_messages_and_completions_carry_themselves() -> None:
    # A step's reports carry data it gave: always unpacked and checked.
    for message in EXAMPLES.values():
        carried = isinstance(message.encode(), messages.Carried)
        assert carried == isinstance(message, StepMessage | Completion)
