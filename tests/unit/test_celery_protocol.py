"""Celery's wire as aexec speaks it, without Celery: task ids, task messages, values,
results."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

import msgpack
import pytest

from aexec import pipeline
from aexec.celery import celery_step
from aexec.celery.protocol import (
    MSGPACK,
    TaskOptions,
    TaskResult,
    dumps,
    loads,
    parse_task_id,
    revoke_message,
    task_id,
    task_message,
    to_celery,
)
from aexec.errors import CodecError, DefinitionError
from aexec.plan import Plan


@pytest.mark.parametrize(
    ("run_id", "attempt", "key"),
    [("r1", 1, "add"), ("a.b.c", 12, "x.y.z"), ("run", 3, "key with spaces.and.dots")],
)
def test_a_task_id_names_its_attempt_whatever_dots_the_run_and_key_hold(
    run_id: str, attempt: int, key: str
) -> None:
    assert parse_task_id(task_id(run_id, attempt, key)) == (run_id, attempt, key)


@pytest.mark.parametrize(
    "tid", ["d6b1f0a2-6c0e-4bd2-9e9f-7b1e2c3d4e5f", "aexec.x", "aexec.5.ab.1.k", "aexec.2.ab.x.k"]
)
def test_a_task_id_aexec_did_not_make_is_not_taken_for_one(tid: str) -> None:
    assert parse_task_id(tid) is None


def test_a_task_id_over_amqps_limit_is_refused_with_the_reason() -> None:
    with pytest.raises(CodecError, match="over AMQP's 255"):
        task_id("r" * 100, 1, "k" * 200)


def test_a_task_message_is_protocol_v2_with_the_body_celery_expects() -> None:
    options = TaskOptions(countdown=10.0, expires=60.0, time_limit=5.0, soft_time_limit=4.0)
    message = task_message(
        "proj.tasks.add", "tid-1", [1, 2], {"z": 3}, options, priority=7, now=1_000_000.0
    )
    headers = message.headers
    assert headers["lang"] == "py"
    assert (headers["task"], headers["id"], headers["root_id"]) == ("proj.tasks.add", "tid-1",
                                                                    "tid-1")  # fmt: skip
    assert headers["retries"] == 0
    assert headers["timelimit"] == [5.0, 4.0]
    assert headers["eta"] == dt.datetime.fromtimestamp(1_000_010.0, dt.UTC).isoformat()
    assert headers["expires"] == dt.datetime.fromtimestamp(1_000_060.0, dt.UTC).isoformat()
    assert headers["argsrepr"] == "[1, 2]"
    assert json.loads(message.body) == [
        [1, 2],
        {"z": 3},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    assert (message.content_type, message.priority) == ("application/json", 7)


def test_msgpack_is_offered_and_pickle_never() -> None:
    message = task_message("t", "id", [b"\x00"], {}, TaskOptions(serializer="msgpack"))
    assert message.content_type == MSGPACK
    assert msgpack.unpackb(message.body)[0] == [b"\x00"]
    with pytest.raises(CodecError, match="never pickle"):
        task_message("t", "id", [], {}, TaskOptions(serializer="pickle"))
    with pytest.raises(CodecError, match="only JSON and msgpack"):
        loads(b"\x80\x04K\x01.", "application/x-python-serialize")


def test_values_cross_as_kombu_encodes_them_and_come_back_as_they_were() -> None:
    value = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 2),
        "at": dt.time(3, 4, 5),
        "money": decimal.Decimal("1.10"),
        "id": uuid.UUID(int=7),
        "text": b"abc",
        "binary": b"\xff\x00",
        "list": (1, 2.5, None, True),
    }
    encoded = dumps(to_celery(value), "application/json")
    assert json.loads(encoded)["when"] == {"__type__": "datetime", "__value__": value["when"]
                                           .isoformat()}  # fmt: skip
    assert loads(encoded, "application/json") == {**value, "list": [1, 2.5, None, True]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1, 2}, "argument is a set, which does not cross to Celery as JSON"),
        ({"k": float("nan")}, r"argument\['k'\] is nan, which JSON cannot carry"),
        ({1: "x"}, "argument has a key 1 that is not a string"),
        ([object()], r"argument\[0\] is a object"),
    ],
)
def test_a_value_json_cannot_carry_is_named_in_the_error(value: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        to_celery(value, "argument")


def test_a_failure_carries_the_exception_type_message_and_traceback() -> None:
    result = TaskResult.from_meta(
        {
            "task_id": "t",
            "status": "FAILURE",
            "result": {
                "exc_type": "KeyError",
                "exc_message": ["missing"],
                "exc_module": "builtins",
            },
            "traceback": "Traceback ...\nKeyError: 'missing'",
        }
    )
    error = result.error()
    assert (error.type, error.message, error.retryable) == ("KeyError", "missing", True)
    assert error.traceback.endswith("KeyError: 'missing'")


@pytest.mark.parametrize("kind", ["NotRegistered", "TimeLimitExceeded"])
def test_an_unknown_task_or_a_time_limit_is_not_retried(kind: str) -> None:
    meta = {"status": "FAILURE", "result": {"exc_type": kind, "exc_message": ["x"]}}
    assert not TaskResult.from_meta(meta, "t").error().retryable


def test_a_started_result_names_the_celery_worker() -> None:
    meta = {"status": "STARTED", "result": {"pid": 3, "hostname": "celery@box"}}
    started = TaskResult.from_meta(meta, "t")
    assert (started.worker, started.ready) == ("celery@box", False)


def test_a_malformed_result_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        TaskResult.from_meta(["not", "a", "mapping"])
    with pytest.raises(CodecError):
        TaskResult.from_meta({"result": 1})
    with pytest.raises(CodecError):
        loads(b"{not json", "application/json")


def test_revoke_is_a_remote_control_broadcast_with_terminate() -> None:
    body = json.loads(revoke_message(["a", "b"], terminate=True))
    assert body == {
        "method": "revoke",
        "arguments": {"task_id": ["a", "b"], "terminate": True, "signal": "SIGTERM"},
        "destination": None,
        "pattern": None,
        "matcher": None,
    }


add = celery_step("proj.tasks.add", queue="math", priority=3, countdown=2, time_limit=30)


@pipeline
def sums(n: int = 2) -> Any:
    return add(add(1, n), 10)


def test_celery_steps_keep_their_kind_and_options_in_the_stored_plan() -> None:
    plan = sums.compile().plan
    again = Plan.from_bytes(plan.to_bytes())
    assert again.digest == plan.digest
    step = again.step("proj.tasks.add")
    assert (step.kind, step.queue, step.priority) == ("celery", "math", 3)
    assert dict(step.task_options) == {"countdown": 2.0, "serializer": "json", "time_limit": 30.0}
    assert again.queues == frozenset()  # no aexec step queue to declare
    assert again.kinds == frozenset({"celery"})


def test_bad_celery_step_options_are_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="serializer must be 'json' or 'msgpack'"):
        celery_step("t", serializer="pickle")
    with pytest.raises(DefinitionError, match="eta must be a datetime with a time zone"):
        celery_step("t", eta=dt.datetime(2026, 1, 1))
    with pytest.raises(DefinitionError, match="countdown must be a number of seconds"):
        celery_step("t", countdown=-1)
