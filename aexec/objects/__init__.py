"""The objects port: large step outputs stored by key (claim checks).

Adapters: :mod:`aexec.objects.memory`, :mod:`aexec.objects.fs` (a directory) and, later,
S3.  All pass ``tests/contract/test_objects.py``.  ``get`` of a missing key raises
:class:`~aexec.errors.ObjectNotFoundError`.
"""

from __future__ import annotations

from typing import Any, Protocol

from aexec import codec


class ObjectStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...


async def load_value(objects: ObjectStore, encoded: bytes) -> Any:
    """Decode ``encoded``, fetching every claim check (``ObjectRef``) inside it from
    ``objects``: step inputs on a worker, a run's result on a client."""
    value, has_refs = codec.decode_with_refs(encoded)
    if not has_refs:
        return value
    loaded = {}
    for ref in codec.collect_refs(value, []):
        if ref.key not in loaded:
            loaded[ref.key] = codec.decode(await objects.get(ref.key))
    return codec.map_refs(value, lambda ref: loaded[ref.key])
