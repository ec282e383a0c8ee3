"""The step cache: a step declared ``@step(cache=True, version="1")`` reuses the output of
an earlier successful attempt with the same inputs instead of running again.

A worker looks the attempt up before running it, by a key hashed from the step's name, its
``version`` (which the user bumps when the code changes) and its call with its inputs
(their values, loaded from the object store if need be), or from what a cache key function
returns for them (``cache=lambda path, size: path``).  Entries live in the object store
under ``cache/<name>/<sha256>``, each holding its expiry (``cache_ttl`` seconds after it
was written, or none) and the whole output (not a reference to another run's object,
which retention may delete).  A hit travels to the coordinator as a
:class:`~aexec.directives.Cached` output and is recorded as the step's success with
``"cached": true`` in its data.

A cache that fails (an object store error, an entry that does not decode) is a miss, never
a failed step.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aexec import codec
from aexec.errors import AexecError, CodecError, ObjectNotFoundError, ObjectStoreError
from aexec.objects import ObjectStore

log = logging.getLogger(__name__)

PREFIX = "cache/"


def key(name: str, version: str, call: bytes, inputs: Sequence[Any], custom: Any = None) -> str:
    """The object key of an attempt's cache entry."""
    digest = hashlib.sha256()
    digest.update(codec.encode([name, version]))
    if custom is None:
        digest.update(call)
        digest.update(codec.encode(list(inputs)))
    else:
        digest.update(codec.encode(["key", custom]))
    return f"{PREFIX}{name}/{digest.hexdigest()}"


async def lookup(objects: ObjectStore, entry: str, *, now: float | None = None) -> bytes | None:
    """The encoded output cached under ``entry``, or None (absent, expired or unreadable)."""
    try:
        data = await objects.get(entry)
    except ObjectNotFoundError:
        return None
    except ObjectStoreError as exc:
        log.warning("step cache: cannot read %s (running the step): %s", entry, exc)
        return None
    try:
        expires, output = codec.decode(data, max_size=len(data))
    except (CodecError, TypeError, ValueError):
        log.warning("step cache: %s does not decode (running the step)", entry)
        return None
    if not isinstance(output, bytes) or not (expires is None or isinstance(expires, float)):
        return None
    if expires is not None and expires <= (time.time() if now is None else now):
        return None
    return output


async def store(objects: ObjectStore, entry: str, output: bytes, ttl: float | None) -> None:
    """Cache ``output`` under ``entry`` (for ``ttl`` seconds, or with no expiry)."""
    expires = None if ttl is None else time.time() + ttl
    try:
        await objects.put(entry, codec.encode([expires, output]))
    except AexecError as exc:
        log.warning("step cache: cannot write %s: %s", entry, exc)


__all__ = ["key", "lookup", "store"]
