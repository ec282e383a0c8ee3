"""The objects port: large step outputs stored by key (claim checks).

Adapters: :mod:`aexec.objects.memory`, :mod:`aexec.objects.fs` (a directory) and, later,
S3.  All pass ``tests/contract/test_objects.py``.  ``get`` of a missing key raises
:class:`~aexec.errors.ObjectNotFoundError`.
"""

from __future__ import annotations

from typing import Protocol


class ObjectStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None: ...
