"""Object store in a local directory: the embedded mode's claim-check storage.

A key is a relative, ``/``-separated path under the root (``runs/r1/render/1``); each
object is one file.  Keys that could leave the root (absolute, ``..``), and keys with empty
or ``.`` segments, NUL or backslash, are rejected with
:class:`~aexec.errors.ObjectStoreError`.  Writes are atomic: the bytes go to a temporary
file in the target directory, are flushed to disk, then ``os.replace`` puts them in place,
so a reader sees the old object or the new one, never a torn one.

The I/O is synchronous on purpose: this is a local disk, and the library starts no threads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

from aexec.errors import ConfigError, ObjectNotFoundError, ObjectStoreError

_TEMP_PREFIX = ".aexec-tmp-"


class FileObjectStore:
    """Objects stored as files under ``root`` (created on ``open()`` if missing)."""

    __slots__ = ("_root",)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root).absolute()

    @classmethod
    def from_url(cls, url: str) -> FileObjectStore:
        """``file:///abs/dir`` (absolute) or ``file://relative/dir`` (from the cwd)."""
        parts = urlsplit(url)
        if parts.scheme != "file" or not url.startswith("file://"):
            raise ConfigError(f"not a file:// object store URL: {url!r}")
        if parts.query or parts.fragment:
            raise ConfigError(f"file:// object store URL takes no query or fragment: {url!r}")
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ConfigError(f"file:// object store URL names no directory: {url!r}")
        return cls(path)

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"FileObjectStore({str(self._root)!r})"

    async def open(self) -> None:
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot create object directory {self._root}: {exc}") from exc

    async def close(self) -> None:
        return None

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            _write_atomic(path, data)
        except OSError as exc:
            raise ObjectStoreError(f"cannot write object {key!r} in {self._root}: {exc}") from exc

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFoundError(f"object {key!r} not found in {self._root}") from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot read object {key!r} in {self._root}: {exc}") from exc

    async def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():  # only a prefix of other keys: there is no object by this name
            return
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete object {key!r} in {self._root}: {exc}") from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Files (and the folders they leave empty) under the prefix's folder whose key
        starts with ``prefix``; temporary files of writes in progress are left alone."""
        if not prefix:
            raise ObjectStoreError("object key prefix must not be empty")
        head, _, tail = prefix.rpartition("/")
        folder = self._root.joinpath(*_key_parts(head)) if head else self._root
        try:
            entries = [e for e in folder.iterdir() if e.name.startswith(tail)]
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as exc:
            raise ObjectStoreError(f"cannot list {folder}: {exc}") from exc
        try:
            deleted = sum(_delete_tree(entry) for entry in entries)
            if folder != self._root and not any(folder.iterdir()):
                folder.rmdir()
        except OSError as exc:
            raise ObjectStoreError(
                f"cannot delete objects under {prefix!r} in {self._root}: {exc}"
            ) from exc
        return deleted

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*_key_parts(key))


def _delete_tree(entry: Path) -> int:
    """Delete the object file ``entry``, or every object file under folder ``entry`` and the
    folders left empty; return how many objects went."""
    if entry.name.startswith(_TEMP_PREFIX):
        return 0
    if not entry.is_dir() or entry.is_symlink():
        entry.unlink(missing_ok=True)
        return 1
    deleted = 0
    for root, dirs, files in os.walk(entry, topdown=False):
        for name in files:
            if not name.startswith(_TEMP_PREFIX):
                os.unlink(os.path.join(root, name))
                deleted += 1
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: a write in progress
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        entry.rmdir()
    return deleted


def _key_parts(key: str) -> list[str]:
    """The path segments of ``key``; raises ObjectStoreError for a key unsafe as a path."""
    if not key:
        raise ObjectStoreError("object key must not be empty")
    if "\x00" in key or "\\" in key:
        raise ObjectStoreError(f"object key {key!r} must not contain NUL or backslash")
    if key.startswith("/"):
        raise ObjectStoreError(f"object key {key!r} must be relative, not absolute")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ObjectStoreError(
            f"object key {key!r} must be a plain relative path (no '..', '.' or empty segments)"
        )
    return parts


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
