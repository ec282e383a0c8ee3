"""In-memory object store: the embedded mode's and the engine tests' claim-check storage.

Objects live in a dict owned by the store instance (nothing is shared between instances),
with the same semantics as the other adapters: ``get`` of a missing key raises
:class:`~aexec.errors.ObjectNotFoundError`, ``delete`` of a missing key is a no-op, and an
empty key is an :class:`~aexec.errors.ObjectStoreError`.
"""

from __future__ import annotations

from aexec.errors import ConfigError, ObjectNotFoundError, ObjectStoreError


class MemoryObjectStore:
    """Objects kept in process memory; they survive ``close()`` and a later ``open()``."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryObjectStore:
        """A new, empty store for ``memory://`` (anything after the scheme is ignored)."""
        if not url.startswith("memory:"):
            raise ConfigError(f"not a memory:// object store URL: {url!r}")
        return cls()

    def __repr__(self) -> str:
        return f"MemoryObjectStore(<{len(self._objects)} objects>)"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        _check_key(key)
        self._objects[key] = bytes(data)  # a private copy: a caller's bytearray may change

    async def get(self, key: str) -> bytes:
        _check_key(key)
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFoundError(f"object {key!r} not found in memory store") from None

    async def delete(self, key: str) -> None:
        _check_key(key)
        self._objects.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        _check_key(prefix)
        doomed = [key for key in self._objects if key.startswith(prefix)]
        for key in doomed:
            del self._objects[key]
        return len(doomed)


def _check_key(key: str) -> None:
    if not key:
        raise ObjectStoreError("object key must not be empty")
