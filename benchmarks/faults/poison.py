"""Bodies the system must refuse without harm: malformed messages of several forms, a body
over aexec's size limit, and a well-formed submission with an absurd run id.

Every body is unique (it carries a marker with the fault's index and a random part), so
the dead-letter queue can be matched against what was injected by the body's digest.
"""

from __future__ import annotations

import random
import uuid

import msgpack

from aexec import messages
from benchmarks.faults import pipelines

MALFORMED_FORMS = (
    "garbage",
    "not-a-list",
    "wrong-version",
    "unknown-kind",
    "wrong-types",
    "extension-type",
    "truncated",
    "bare-string",
)
ABSURD_ID_LENGTH = 9000  # beyond PostgreSQL's 8,000-byte NOTIFY payload


def marker(index: int) -> str:
    return f"aexec-faults-poison-{index}-{uuid.uuid4().hex}"


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def malformed(index: int, variant: int) -> tuple[str, bytes]:
    """``(form, body)``: one of :data:`MALFORMED_FORMS`, chosen by ``variant``."""
    form = MALFORMED_FORMS[variant % len(MALFORMED_FORMS)]
    mark = marker(index)
    step = [messages.VERSION, "step", mark, "k", 1, "name", b"", [], None, "reply.nobody"]
    if form == "garbage":
        noise = random.Random(variant).randbytes(16 + variant * 3)
        body = mark.encode() + noise
    elif form == "not-a-list":
        body = _pack({"poison": mark})
    elif form == "wrong-version":
        body = _pack([99, *step[1:]])
    elif form == "unknown-kind":
        body = _pack([messages.VERSION, "bogus", mark])
    elif form == "wrong-types":
        body = _pack([*step[:4], "not-an-attempt", *step[5:]])
    elif form == "extension-type":
        body = _pack([messages.VERSION, "done", msgpack.ExtType(42, mark.encode())])
    elif form == "truncated":
        whole = _pack(step)
        body = whole[: len(whole) // 2]
    else:
        body = _pack(mark)
    return form, body


def oversized(index: int) -> bytes:
    """One byte over the largest message aexec decodes."""
    head = marker(index).encode()
    return head + b"\0" * (messages.MAX_BODY + 1 - len(head))


def absurd_submission(index: int, tag: int) -> tuple[str, bytes]:
    """``(run_id, body)``: a valid submission of a one-step chain whose run id is
    :data:`ABSURD_ID_LENGTH` characters long."""
    mark = marker(index)
    run_id = (mark * (ABSURD_ID_LENGTH // len(mark) + 1))[:ABSURD_ID_LENGTH]
    plan = pipelines.chain.compile(tag=tag, n=1, ms=1).plan
    return run_id, messages.Submit(run_id, plan.to_bytes(), 0, None).encode()
