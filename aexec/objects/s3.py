"""Object store on S3 or an S3-compatible server (MinIO, moto, Ceph), through aioboto3.

Settings follow the AWS conventions: credentials come from the standard chain
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, profiles, instance
roles) and are never passed through or logged here; the region from ``region=``,
``AWS_REGION`` or ``AWS_DEFAULT_REGION``; the endpoint of an S3-compatible server from
``endpoint_url=``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (path-style addressing is
used with a custom endpoint).

``open()`` enters one aioboto3 client, kept until ``close()``.  Every call is bounded by the
connect and read timeouts and a fixed number of attempts (:class:`S3Timeouts`).  Values
larger than ``multipart_threshold`` are uploaded in parts of ``part_size`` bytes (AWS needs
at least 5 MiB for every part but the last); a failed or cancelled multipart upload is
aborted.  Backend failures become :class:`~aexec.errors.ObjectStoreError` with a one-line
message (``raise ... from exc``); a missing key is :class:`~aexec.errors.ObjectNotFoundError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from aexec.errors import ConfigError, ObjectNotFoundError, ObjectStoreError
from aexec.redaction import redact

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
_READ_CHUNK = 1 * MiB
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_BACKEND_ERRORS: tuple[type[Exception], ...] = (
    BotoCoreError,
    ClientError,
    aiohttp.ClientError,
    OSError,  # includes TimeoutError and ConnectionError
)


@dataclass(frozen=True, slots=True)
class S3Timeouts:
    """Bounds on every S3 call, in seconds.

    ``connect`` and ``read`` bound each connection attempt and each wait for data (socket
    timeouts); ``max_attempts`` counts tries per call, the first included; ``call`` bounds one
    API call (one ``PutObject``, one part of a multipart upload, ``GetObject`` up to its
    headers), retries included, and so also covers sending to a peer that stopped reading,
    which no socket timeout does.  A body being downloaded is bounded by ``read`` per chunk.
    """

    connect: float = 5.0
    read: float = 60.0
    max_attempts: int = 3
    call: float = 300.0

    def __post_init__(self) -> None:
        if min(self.connect, self.read, self.call) <= 0 or self.max_attempts < 1:
            raise ConfigError(f"invalid S3 timeouts: {self}")


class S3ObjectStore:
    """Objects stored under ``s3://bucket/prefix/``; a key ``a/b`` is object ``prefix/a/b``."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        timeouts: S3Timeouts | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name: {bucket!r}")
        if multipart_threshold < 1 or part_size < 1:
            raise ConfigError("S3 multipart_threshold and part_size must be positive")
        env = os.environ
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._endpoint_url = (
            endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        )
        self._region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        self._multipart_threshold = multipart_threshold
        self._part_size = part_size
        self._timeouts = timeouts or S3Timeouts()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None  # aiobotocore's S3 client (untyped)

    @classmethod
    def from_url(cls, url: str) -> S3ObjectStore:
        """``s3://bucket`` or ``s3://bucket/prefix``; everything else from the environment."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ConfigError(f"not an s3:// object store URL: {url!r}")
        if "@" in parts.netloc:
            raise ConfigError(
                "s3:// URL must not carry credentials; use AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            )
        if not parts.netloc:
            raise ConfigError(f"s3:// object store URL names no bucket: {url!r}")
        if parts.query or parts.fragment:
            raise ConfigError(f"s3:// object store URL takes no query or fragment: {url!r}")
        return cls(parts.netloc, unquote(parts.path))

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def endpoint_url(self) -> str | None:
        return self._endpoint_url

    @property
    def region(self) -> str | None:
        return self._region

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def __repr__(self) -> str:
        endpoint = self._endpoint_url and redact(self._endpoint_url)
        endpoint = f", endpoint_url={endpoint!r}" if endpoint else ""
        return f"S3ObjectStore({self.url!r}{endpoint})"

    async def open(self) -> None:
        if self._client is not None:
            return
        options: dict[str, Any] = {
            "connect_timeout": self._timeouts.connect,
            "read_timeout": self._timeouts.read,
            "retries": {"mode": "standard", "total_max_attempts": self._timeouts.max_attempts},
        }
        if self._endpoint_url is not None:
            options["s3"] = {"addressing_style": "path"}
        session = aioboto3.Session()
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.client(
                    "s3",
                    endpoint_url=self._endpoint_url,
                    region_name=self._region,
                    config=AioConfig(**options),
                )
            )
        except _BACKEND_ERRORS as exc:
            await stack.aclose()
            raise ObjectStoreError(f"cannot open {self!r}: {_one_line(exc)}") from exc
        # botocore asks for "Expect: 100-continue" on uploads, and aiohttp then waits for the
        # interim response with no timeout at all: a silent server would hang a put forever.
        # Without the header the wait for the response is bounded by the read timeout.
        self._client.meta.events.register_last("before-call.s3", _drop_expect_header)
        self._stack = stack
        logger.debug("opened %r (region %s)", self, self._region or "default")

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is None:
            return
        try:
            await stack.aclose()
        except _BACKEND_ERRORS as exc:
            raise ObjectStoreError(f"cannot close {self!r}: {_one_line(exc)}") from exc

    async def put(self, key: str, data: bytes) -> None:
        client, name = self._client_for(key)
        try:
            if len(data) > self._multipart_threshold:
                await self._put_multipart(client, name, data)
            else:
                await self._call(client.put_object, Bucket=self._bucket, Key=name, Body=data)
        except _BACKEND_ERRORS as exc:
            raise self._failed("put", key, exc) from exc

    async def get(self, key: str) -> bytes:
        client, name = self._client_for(key)
        try:
            reply = await self._call(client.get_object, Bucket=self._bucket, Key=name)
            body = reply["Body"]
            async with body:  # releases the connection however the read ends
                chunks = [chunk async for chunk in body.iter_chunks(_READ_CHUNK)]
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(f"object {key!r} not found in {self.url}") from exc
            raise self._failed("get", key, exc) from exc
        except _BACKEND_ERRORS as exc:
            raise self._failed("get", key, exc) from exc
        return b"".join(chunks)

    async def delete(self, key: str) -> None:
        client, name = self._client_for(key)
        try:
            await self._call(client.delete_object, Bucket=self._bucket, Key=name)
        except _BACKEND_ERRORS as exc:
            raise self._failed("delete", key, exc) from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Listed a page (1,000 keys) at a time, each page deleted in one request."""
        client, name = self._client_for(prefix)
        deleted = 0
        try:
            token: str | None = None
            while True:
                page = await self._call(
                    client.list_objects_v2,
                    Bucket=self._bucket,
                    Prefix=name,
                    **({"ContinuationToken": token} if token else {}),
                )
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    reply = await self._call(
                        client.delete_objects,
                        Bucket=self._bucket,
                        Delete={"Objects": keys, "Quiet": True},
                    )
                    errors = reply.get("Errors") or []
                    if errors:
                        first = errors[0]
                        raise ObjectStoreError(
                            f"S3 delete of {len(errors)} objects under {prefix!r} in "
                            f"{self.url} failed: {first.get('Code')}: {first.get('Message')}"
                        )
                    deleted += len(keys)
                if not page.get("IsTruncated"):
                    return deleted
                token = page.get("NextContinuationToken")
        except _BACKEND_ERRORS as exc:
            raise self._failed("delete", f"{prefix}*", exc) from exc

    async def _put_multipart(self, client: Any, name: str, data: bytes) -> None:
        part_size = max(self._part_size, -(-len(data) // MAX_PARTS))
        upload = await self._call(client.create_multipart_upload, Bucket=self._bucket, Key=name)
        upload_id: str = upload["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            for number, offset in enumerate(range(0, len(data), part_size), start=1):
                reply = await self._call(
                    client.upload_part,
                    Bucket=self._bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[offset : offset + part_size],
                )
                parts.append({"ETag": reply["ETag"], "PartNumber": number})
            await self._call(
                client.complete_multipart_upload,
                Bucket=self._bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:  # a failure or a cancellation: leave no orphaned parts behind
            await self._abort_multipart(client, name, upload_id)
            raise

    async def _abort_multipart(self, client: Any, name: str, upload_id: str) -> None:
        try:
            await self._call(
                client.abort_multipart_upload, Bucket=self._bucket, Key=name, UploadId=upload_id
            )
        except _BACKEND_ERRORS as exc:
            logger.warning(
                "could not abort multipart upload of %s in %s: %s", name, self.url, _one_line(exc)
            )

    async def _call(self, method: Callable[..., Awaitable[Any]], **params: Any) -> Any:
        """``await method(**params)`` within ``timeouts.call`` seconds."""
        limit = self._timeouts.call
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await method(**params)
        except TimeoutError:
            if scope.expired():
                raise TimeoutError(f"no answer within {limit:g}s") from None
            raise

    def _client_for(self, key: str) -> tuple[Any, str]:
        if not key:
            raise ObjectStoreError("object key must not be empty")
        if self._client is None:
            raise ObjectStoreError(f"{self!r} is not open")
        return self._client, f"{self._prefix}/{key}" if self._prefix else key

    def _failed(self, operation: str, key: str, exc: BaseException) -> ObjectStoreError:
        return ObjectStoreError(f"S3 {operation} of {key!r} in {self.url} failed: {_one_line(exc)}")


def _drop_expect_header(params: dict[str, Any], **kwargs: Any) -> None:
    params.get("headers", {}).pop("Expect", None)


def _error_code(exc: ClientError) -> str:
    error: dict[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code", ""))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
