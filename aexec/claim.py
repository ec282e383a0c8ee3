"""Claim checks the coordinator makes: messages that would be too large go out smaller.

A message is at most :data:`~aexec.config.MAX_MESSAGE_SIZE` bytes.  Workers keep their
outputs under it (an output over the inline threshold is stored and travels as a
reference), but a coordinator assembles messages from many values:

* a step message carries every upstream output the step takes inline: a fan-in of
  thousands of steps may add up to more than a message holds.  :func:`fit_inputs` moves the
  largest of them to the object store, each where its own step's output would have gone
  (:func:`~aexec.objects.output_key`), until the message fits; the worker loads them back;
* a batch of events for a remote client may carry a run's result made of many inline
  outputs.  :func:`event_batches` splits a batch into messages that fit, and moves a result
  too large for any message to the object store (:func:`~aexec.objects.result_key`); the
  client loads it back, with the references it holds.

What cannot be made to fit (a step's call template itself over the limit, or no object
store) is a :class:`~aexec.errors.ValueTooLargeError`; the coordinator fails that step
rather than publish a message nobody could take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import msgpack

from aexec import codec
from aexec.batch import ActiveRun
from aexec.errors import ObjectNotFoundError, ObjectStoreError, ValueTooLargeError
from aexec.objects import ObjectStore, output_key, result_key

log = logging.getLogger(__name__)

PUT_ATTEMPTS = 3
PUT_BACKOFF = 0.2  # seconds before the second attempt; doubled before each next one
ENVELOPE = 4096
"""Bytes kept free for a message's envelope (ids, names, headers) when fitting values."""


async def put(objects: ObjectStore, key: str, data: bytes) -> None:
    """Store ``data`` under ``key``, trying ``PUT_ATTEMPTS`` times over a transient failure."""
    delay = PUT_BACKOFF
    for attempt in range(1, PUT_ATTEMPTS + 1):
        try:
            await objects.put(key, data)
            return
        except ObjectNotFoundError:
            raise
        except ObjectStoreError as exc:
            if attempt == PUT_ATTEMPTS:
                raise
            log.warning("storing %s failed, trying again in %.1f s: %s", key, delay, exc)
            await asyncio.sleep(delay)
            delay *= 2


async def fit_inputs(
    objects: ObjectStore | None, run: ActiveRun, index: int, inputs: list[bytes], excess: int
) -> list[bytes]:
    """``inputs`` of step ``index`` (its upstream outputs, in order) with the largest inline
    ones replaced by claim checks until they are at least ``excess`` bytes smaller.

    Each moved output is kept in ``run.spilled``, so the step's other dependents (and later
    attempts) take the reference without storing it again.  ObjectStoreError when the
    object store fails; ValueTooLargeError when there is none."""
    plan, state = run.plan, run.state
    step = plan.steps[index]
    if objects is None:
        raise ValueTooLargeError(
            f"the message of step {step.key!r} would be {excess} bytes over the limit, and "
            "this coordinator has no object store to move its inputs to"
        )
    fitted = list(inputs)
    by_size = sorted(range(len(fitted)), key=lambda i: len(fitted[i]), reverse=True)
    saved = 0
    for i in by_size:
        if saved >= excess:
            break
        dep = step.deps[i]
        if dep == step.map_over and step.element is not None:
            continue  # one item of that list, not its output: small, and this step's own
        ref = run.spilled.get(dep)
        if ref is None:
            key = output_key(run.run_id, plan.steps[dep].key, state.attempts[dep])
            ref = codec.encode(codec.ObjectRef(key))
            if len(ref) >= len(fitted[i]):
                break  # the rest are as small as a reference
            await put(objects, key, fitted[i])
            run.spilled[dep] = ref
        saved += len(fitted[i]) - len(ref)
        fitted[i] = ref
    return fitted


async def load_list(objects: ObjectStore | None, output: bytes | None) -> bytes | None:
    """The value a step output refers to, if it is a claim check (a list a map runs over,
    too large to be inline); None for an inline output.  ObjectStoreError when it cannot
    be loaded."""
    if not output or output[0] not in codec.EXT_HEADS:
        return None
    try:
        ref = codec.decode(output)
    except Exception:
        return None
    if not isinstance(ref, codec.ObjectRef):
        return None
    if objects is None:
        raise ObjectStoreError("this coordinator has no object store to load the list from")
    return await objects.get(ref.key)


async def event_batches(
    objects: ObjectStore | None, run_id: str, records: list[list[Any]], limit: int
) -> list[list[list[Any]]]:
    """``records`` (wire event records) split into batches that each fit in a message of
    ``limit`` bytes, in order; a record whose output alone would not fit has its output
    moved to the object store first (ValueTooLargeError without one)."""
    room = limit - ENVELOPE
    batches: list[list[list[Any]]] = [[]]
    size = 0
    for record in records:
        length = _size(record)
        if length > room:
            record = await _store_output(objects, run_id, record, length)
            length = _size(record)
        if batches[-1] and size + length > room:
            batches.append([])
            size = 0
        batches[-1].append(record)
        size += length
    return batches if batches[-1] else batches[:-1]


async def _store_output(
    objects: ObjectStore | None, run_id: str, record: list[Any], length: int
) -> list[Any]:
    output = record[6]
    if objects is None or not isinstance(output, bytes):
        raise ValueTooLargeError(
            f"an event of run {run_id} is {length} bytes, too large for a message"
        )
    key = result_key(run_id)
    await put(objects, key, output)
    return [*record[:6], codec.encode(codec.ObjectRef(key))]


def _size(value: Sequence[Any]) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


__all__ = ["ENVELOPE", "event_batches", "fit_inputs", "put"]
