"""The objects port: large step outputs stored by key (claim checks).

Adapters: :mod:`aexec.objects.memory`, :mod:`aexec.objects.fs` (a directory) and
:mod:`aexec.objects.s3` (S3 or an S3-compatible server), chosen by URL with
:func:`from_url`.  All pass ``tests/contract/test_objects.py``.  ``get`` of a missing key
raises :class:`~aexec.errors.ObjectNotFoundError`.

Every object of a run lives under :func:`run_prefix` (its outputs at :func:`output_key`),
so deleting a run's objects is one ``delete_prefix``.
"""

from __future__ import annotations

from typing import Any, Protocol

from aexec import codec
from aexec.errors import CodecError, ConfigError


class ObjectStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (not empty: a folder is
        ``"outputs/r1/"``); return how many were deleted."""


def run_prefix(run_id: str) -> str:
    """The prefix of every object of run ``run_id``."""
    return f"outputs/{run_id}/"


def output_key(run_id: str, step_key: str, attempt: int) -> str:
    """Where the output of one attempt of a step is stored when it is too large to travel
    inline."""
    return f"{run_prefix(run_id)}{step_key}/{attempt}"


MAX_REF_DEPTH = 4
"""How deep claim checks may nest (a value stored by reference that holds references):
a run's result moved to the object store holds the references of its large outputs."""


def result_key(run_id: str) -> str:
    """Where a run's result is stored when it is too large for a message to a client (the
    folder of a step keyed ``result``, if there is one, holds only numbered attempts)."""
    return f"{run_prefix(run_id)}result/run"


async def load_value(
    objects: ObjectStore, encoded: bytes, *, max_size: int = codec.DEFAULT_MAX_BODY
) -> Any:
    """Decode ``encoded``, fetching every claim check (``ObjectRef``) inside it from
    ``objects``, and those inside what was fetched: step inputs on a worker, a run's result
    on a client.  Each value, inline or fetched, may be up to ``max_size`` bytes
    (``Settings.max_value_size``)."""
    value, has_refs = codec.decode_with_refs(encoded, max_size=max_size)
    if not has_refs:
        return value
    return await resolve_refs(objects, value, max_size=max_size)


async def resolve_refs(
    objects: ObjectStore, value: Any, *, max_size: int = codec.DEFAULT_MAX_BODY
) -> Any:
    """``value``, decoded by :func:`~aexec.codec.decode_with_refs` and found to hold claim
    checks, with each fetched from ``objects`` (see :func:`load_value`)."""
    return await _resolve(objects, value, max_size, MAX_REF_DEPTH)


async def _resolve(objects: ObjectStore, value: Any, max_size: int, depth: int) -> Any:
    if depth == 0:
        raise CodecError(f"claim checks nest deeper than {MAX_REF_DEPTH} levels")
    loaded: dict[str, Any] = {}
    for ref in codec.collect_refs(value, []):
        if ref.key not in loaded:
            data = await objects.get(ref.key)
            fetched, nested = codec.decode_with_refs(data, max_size=max_size)
            loaded[ref.key] = (
                await _resolve(objects, fetched, max_size, depth - 1) if nested else fetched
            )
    return codec.map_refs(value, lambda ref: loaded[ref.key])


def from_url(url: str) -> ObjectStore:
    """The object store adapter for ``url``: ``memory://``, ``file:///dir`` or
    ``s3://bucket/prefix``; its module is imported only when chosen.  Other schemes are a
    :class:`~aexec.errors.ConfigError`.  The store is not open yet."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from aexec.objects.memory import MemoryObjectStore

        return MemoryObjectStore()
    if scheme == "file":
        from aexec.objects.fs import FileObjectStore

        return FileObjectStore.from_url(url)
    if scheme == "s3":
        from aexec.objects.s3 import S3ObjectStore

        return S3ObjectStore.from_url(url)
    raise ConfigError(f"unsupported objects URL scheme {scheme}://")
