"""The objects port contract: every adapter stores, returns and deletes bytes by key alike.

The suite runs over the memory, file and S3 adapters (S3 against moto's server, marked
``s3``); adapter-specific behaviour (path safety of the file store, multipart uploads and
timeouts of the S3 store, URL parsing) follows the shared part.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aexec.errors import ConfigError, ObjectNotFoundError, ObjectStoreError
from aexec.objects import ObjectStore
from aexec.objects.fs import FileObjectStore
from aexec.objects.memory import MemoryObjectStore
from aexec.objects.s3 import MiB, S3ObjectStore, S3Timeouts
from tests.plugins.s3 import s3_client

S3_PREFIX = "contract"
S3_THRESHOLD = 1 * MiB  # small, so that the large-value test goes through multipart upload
S3_PART_SIZE = 5 * MiB  # the smallest part AWS (and moto) accept for all but the last part

ADAPTERS = [
    pytest.param("memory"),
    pytest.param("file"),
    pytest.param("s3", marks=pytest.mark.s3),
]


@pytest.fixture(params=ADAPTERS)
def unopened(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    kind: str = request.param
    if kind == "memory":
        return MemoryObjectStore()
    if kind == "file":
        return FileObjectStore(str(tmp_path / "objects"))
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3ObjectStore(
        bucket, S3_PREFIX, multipart_threshold=S3_THRESHOLD, part_size=S3_PART_SIZE
    )


@pytest.fixture
async def objects(unopened: ObjectStore) -> AsyncIterator[ObjectStore]:
    await unopened.open()
    try:
        yield unopened
    finally:
        await unopened.close()


# -- the shared contract ---------------------------------------------------------------------


async def test_get_returns_the_bytes_put(objects: ObjectStore) -> None:
    await objects.put("k", b"hello")
    assert await objects.get("k") == b"hello"


async def test_put_overwrites_an_existing_object(objects: ObjectStore) -> None:
    await objects.put("k", b"first")
    await objects.put("k", b"second, longer")
    await objects.put("k", b"3")
    assert await objects.get("k") == b"3"


async def test_an_empty_value_round_trips(objects: ObjectStore) -> None:
    await objects.put("empty", b"")
    assert await objects.get("empty") == b""


async def test_every_byte_value_round_trips(objects: ObjectStore) -> None:
    data = bytes(range(256)) * 17 + b"\r\n\x00\xff" + os.urandom(4096)
    await objects.put("binary", data)
    assert await objects.get("binary") == data


async def test_a_large_value_round_trips(objects: ObjectStore) -> None:
    data = os.urandom(20 * MiB + 123)
    await objects.put("large", data)
    assert await objects.get("large") == data


async def test_a_bytearray_value_is_stored_as_it_was_when_put(objects: ObjectStore) -> None:
    data = bytearray(b"before")
    await objects.put("k", data)  # type: ignore[arg-type]  # callers may pass a bytearray
    data[:] = b"after!"
    assert await objects.get("k") == b"before"


async def test_get_of_a_missing_key_raises_not_found_naming_the_key(
    objects: ObjectStore,
) -> None:
    with pytest.raises(ObjectNotFoundError, match="no-such-key"):
        await objects.get("no-such-key")


async def test_not_found_is_an_object_store_error(objects: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError):
        await objects.get("missing/too")


async def test_a_deleted_object_is_not_found(objects: ObjectStore) -> None:
    await objects.put("k", b"v")
    await objects.delete("k")
    with pytest.raises(ObjectNotFoundError, match="'k'"):
        await objects.get("k")


async def test_delete_of_a_missing_key_is_a_no_op(objects: ObjectStore) -> None:
    await objects.delete("never-written")
    await objects.delete("never/written/either")


async def test_delete_leaves_other_keys_alone(objects: ObjectStore) -> None:
    await objects.put("a", b"1")
    await objects.put("b", b"2")
    await objects.delete("a")
    assert await objects.get("b") == b"2"


async def test_keys_with_slashes_are_separate_objects(objects: ObjectStore) -> None:
    await objects.put("runs/r1/render/1", b"one")
    await objects.put("runs/r1/render/2", b"two")
    await objects.put("runs/r2/render/1", b"other run")
    assert await objects.get("runs/r1/render/1") == b"one"
    assert await objects.get("runs/r1/render/2") == b"two"
    assert await objects.get("runs/r2/render/1") == b"other run"
    with pytest.raises(ObjectNotFoundError):
        await objects.get("runs/r1/render")
    with pytest.raises(ObjectNotFoundError):
        await objects.get("runs/r1")


async def test_keys_may_hold_dots_spaces_and_unicode(objects: ObjectStore) -> None:
    keys = ["a.b", "..hidden-ish", "with space", "ünïcødé/ключ", "x=1&y=2", "step.v2/out.bin"]
    for i, key in enumerate(keys):
        await objects.put(key, str(i).encode())
    for i, key in enumerate(keys):
        assert await objects.get(key) == str(i).encode()


async def test_an_empty_key_is_rejected(objects: ObjectStore) -> None:
    with pytest.raises(ObjectStoreError, match="empty"):
        await objects.put("", b"v")
    with pytest.raises(ObjectStoreError, match="empty"):
        await objects.get("")


async def test_concurrent_puts_of_different_keys_all_land(objects: ObjectStore) -> None:
    values = {f"fan/out/{i}": os.urandom(1000 + i) for i in range(32)}
    await asyncio.gather(*(objects.put(key, value) for key, value in values.items()))
    stored = await asyncio.gather(*(objects.get(key) for key in values))
    assert stored == list(values.values())


async def test_objects_outlive_close_and_reopen(unopened: ObjectStore) -> None:
    await unopened.open()
    await unopened.put("kept", b"v")
    await unopened.close()
    await unopened.open()
    try:
        assert await unopened.get("kept") == b"v"
    finally:
        await unopened.close()


async def test_delete_prefix_deletes_the_objects_of_one_folder_and_counts_them(
    objects: ObjectStore,
) -> None:
    kept = {"outputs/r10/a/1": b"run r10", "outputs/r1x": b"a key beside it", "x": b"x"}
    for key in ("outputs/r1/a/1", "outputs/r1/a/2", "outputs/r1/b/deeper/1"):
        await objects.put(key, b"r1")
    for key, value in kept.items():
        await objects.put(key, value)
    assert await objects.delete_prefix("outputs/r1/") == 3
    for key in ("outputs/r1/a/1", "outputs/r1/a/2", "outputs/r1/b/deeper/1"):
        with pytest.raises(ObjectNotFoundError):
            await objects.get(key)
    for key, value in kept.items():
        assert await objects.get(key) == value
    assert await objects.delete_prefix("outputs/r1/") == 0
    await objects.put("outputs/r1/again", b"a new object where the old ones were")
    assert await objects.get("outputs/r1/again") == b"a new object where the old ones were"


async def test_delete_prefix_matches_key_prefixes_not_only_folders(objects: ObjectStore) -> None:
    for key in ("logs/2024-01", "logs/2024-02/x", "logs/2025-01"):
        await objects.put(key, b"v")
    assert await objects.delete_prefix("logs/2024") == 2
    assert await objects.get("logs/2025-01") == b"v"
    assert await objects.delete_prefix("nothing/here/") == 0


async def test_delete_prefix_deletes_more_than_a_page_of_keys(objects: ObjectStore) -> None:
    keys = [f"many/{i:04d}" for i in range(1005)]  # S3 lists and deletes 1,000 at a time
    for start in range(0, len(keys), 100):
        await asyncio.gather(*(objects.put(key, b"") for key in keys[start : start + 100]))
    assert await objects.delete_prefix("many/") == len(keys)
    with pytest.raises(ObjectNotFoundError):
        await objects.get(keys[-1])


async def test_an_empty_prefix_is_rejected(objects: ObjectStore) -> None:
    await objects.put("k", b"v")
    with pytest.raises(ObjectStoreError, match="empty"):
        await objects.delete_prefix("")
    assert await objects.get("k") == b"v"


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- memory ----------------------------------------------------------------------------------


def test_memory_from_url_gives_a_fresh_store_each_time() -> None:
    assert isinstance(MemoryObjectStore.from_url("memory://"), MemoryObjectStore)
    assert MemoryObjectStore.from_url("memory://") is not MemoryObjectStore.from_url("memory://")
    with pytest.raises(ConfigError):
        MemoryObjectStore.from_url("file:///tmp/x")


# -- file ------------------------------------------------------------------------------------


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FileObjectStore]:
    store = FileObjectStore(str(tmp_path / "root"))
    await store.open()
    yield store
    await store.close()


@pytest.mark.parametrize(
    "key",
    ["..", "../escaped", "a/../../escaped", "a/..", "/etc/passwd", "/abs", "a//b", "a/./b",
     "./a", "a/", "a\\..\\b", "nul\x00byte"],
)  # fmt: skip
async def test_file_store_rejects_keys_that_could_leave_the_root(
    files: FileObjectStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(ObjectStoreError, match="key"):
        await files.put(key, b"x")
    with pytest.raises(ObjectStoreError, match="key"):
        await files.get(key)
    with pytest.raises(ObjectStoreError, match="key"):
        await files.delete(key)
    assert _names(tmp_path) == ["root"]
    assert _names(files.root) == []


async def test_file_store_keeps_each_object_in_one_file_under_the_root(
    files: FileObjectStore,
) -> None:
    await files.put("runs/r1/out", b"data")
    assert (files.root / "runs" / "r1" / "out").read_bytes() == b"data"


async def test_file_store_writes_leave_no_temporary_files(files: FileObjectStore) -> None:
    await files.put("d/k", b"1")
    await files.put("d/k", b"2")
    assert _names(files.root / "d") == ["k"]


async def test_file_store_reports_a_key_that_is_also_a_prefix_as_an_error(
    files: FileObjectStore,
) -> None:
    # A directory cannot be a file too: "a" and "a/b" cannot both be objects in a file store.
    await files.put("a/b", b"1")
    with pytest.raises(ObjectStoreError, match="'a'"):
        await files.put("a", b"2")
    await files.put("c", b"3")
    with pytest.raises(ObjectStoreError, match="'c/d'"):
        await files.put("c/d", b"4")
    assert await files.get("a/b") == b"1"
    assert await files.get("c") == b"3"
    assert _names(files.root) == ["a", "c"]
    assert _names(files.root / "a") == ["b"]


async def test_file_store_creates_its_root_on_open(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "deep" / "er" / "root")
    await store.open()
    assert store.root.is_dir()


async def test_file_store_that_cannot_create_its_root_raises_object_store_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = FileObjectStore(tmp_path / "file" / "root")
    with pytest.raises(ObjectStoreError, match="cannot create"):
        await store.open()


def test_file_from_url_takes_an_absolute_path(tmp_path: Path) -> None:
    assert FileObjectStore.from_url(f"file://{tmp_path}/objs").root == tmp_path / "objs"
    assert FileObjectStore.from_url("file:///srv/aexec/objects").root == Path("/srv/aexec/objects")


def test_file_from_url_takes_a_path_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileObjectStore.from_url("file://relative/dir")
    assert store.root == tmp_path / "relative" / "dir"
    monkeypatch.chdir("/")
    assert store.root == tmp_path / "relative" / "dir"  # fixed when the store is made


def test_file_from_url_decodes_percent_escapes() -> None:
    assert FileObjectStore.from_url("file:///tmp/my%20objects").root == Path("/tmp/my objects")


@pytest.mark.parametrize(
    "url", ["file://", "file:/tmp/x", "s3://bucket/x", "/tmp/x", "file:///tmp/x?mode=1"]
)
def test_file_from_url_rejects_other_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        FileObjectStore.from_url(url)


# -- s3 --------------------------------------------------------------------------------------


@pytest.mark.s3
async def test_s3_keys_live_under_the_prefix(s3_bucket: str) -> None:
    store = S3ObjectStore(s3_bucket, "/some/prefix/")
    await store.open()
    try:
        await store.put("a/b", b"v")
    finally:
        await store.close()
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    try:
        listed = client.list_objects_v2(Bucket=s3_bucket)
    finally:
        client.close()
    assert [item["Key"] for item in listed["Contents"]] == ["some/prefix/a/b"]


@pytest.mark.s3
async def test_s3_stores_with_different_prefixes_do_not_see_each_other(s3_bucket: str) -> None:
    one, two = S3ObjectStore(s3_bucket, "one"), S3ObjectStore(s3_bucket, "two/")
    await one.open()
    await two.open()
    try:
        await one.put("k", b"1")
        with pytest.raises(ObjectNotFoundError):
            await two.get("k")
        await two.put("k", b"2")
        assert await one.get("k") == b"1"
    finally:
        await one.close()
        await two.close()


@pytest.mark.s3
@pytest.mark.parametrize(("size", "parts"), [(20 * MiB, 4), (2 * MiB, 1), (11 * MiB + 1, 3)])
async def test_s3_uploads_values_above_the_threshold_in_parts(
    s3_bucket: str, size: int, parts: int
) -> None:
    store = S3ObjectStore(s3_bucket, "mp", multipart_threshold=S3_THRESHOLD, part_size=S3_PART_SIZE)
    data = os.urandom(size)
    await store.open()
    try:
        await store.put("big", data)
        assert await store.get("big") == data
    finally:
        await store.close()
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    try:
        head = client.head_object(Bucket=s3_bucket, Key="mp/big")
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    finally:
        client.close()
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart object's ETag


@pytest.mark.s3
async def test_s3_uploads_values_up_to_the_threshold_in_one_request(s3_bucket: str) -> None:
    store = S3ObjectStore(s3_bucket, "sp", multipart_threshold=S3_THRESHOLD)
    await store.open()
    try:
        await store.put("small", b"x" * S3_THRESHOLD)
    finally:
        await store.close()
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    try:
        head = client.head_object(Bucket=s3_bucket, Key="sp/small")
    finally:
        client.close()
    assert "-" not in head["ETag"]


@pytest.mark.s3
async def test_s3_aborts_a_failed_multipart_upload(s3_bucket: str) -> None:
    # Parts below 5 MiB make the server refuse to complete the upload (EntityTooSmall).
    store = S3ObjectStore(s3_bucket, "abort", multipart_threshold=MiB, part_size=MiB)
    await store.open()
    try:
        with pytest.raises(ObjectStoreError, match="EntityTooSmall") as caught:
            await store.put("big", os.urandom(3 * MiB))
        with pytest.raises(ObjectNotFoundError):
            await store.get("big")
    finally:
        await store.close()
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None
    client = s3_client(os.environ["AWS_ENDPOINT_URL"])
    try:
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    finally:
        client.close()


@pytest.mark.s3
async def test_s3_missing_bucket_is_an_object_store_error_not_not_found(s3_env: str) -> None:
    store = S3ObjectStore("aexec-no-such-bucket-here")
    await store.open()
    try:
        with pytest.raises(ObjectStoreError, match="NoSuchBucket") as caught:
            await store.put("k", b"v")
        assert not isinstance(caught.value, ObjectNotFoundError)
    finally:
        await store.close()


@pytest.mark.s3
async def test_s3_store_must_be_opened_before_use() -> None:
    store = S3ObjectStore("bucket")
    with pytest.raises(ObjectStoreError, match="not open"):
        await store.get("k")


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials and region for an S3 store that must never reach a real AWS account."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def refused_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def silent_endpoint() -> AsyncIterator[str]:
    """An http endpoint that accepts connections, then neither reads nor answers."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # hold the connection open, say nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture(params=["refused", "silent"])
def unreachable_endpoint(
    request: pytest.FixtureRequest, refused_endpoint: str, silent_endpoint: str
) -> str:
    return refused_endpoint if request.param == "refused" else silent_endpoint


SHORT = S3Timeouts(connect=0.5, read=0.5, max_attempts=2, call=3.0)


@pytest.mark.s3
async def test_s3_unreachable_endpoint_fails_within_the_timeouts(
    fake_aws: None, unreachable_endpoint: str
) -> None:
    store = S3ObjectStore(
        "bucket", "p", endpoint_url=unreachable_endpoint, multipart_threshold=MiB, timeouts=SHORT
    )
    operations = {
        "put": lambda: store.put("k", b"v"),
        "multipart put": lambda: store.put("big", bytes(2 * MiB)),
        "get": lambda: store.get("k"),
        "delete": lambda: store.delete("k"),
    }
    await store.open()
    try:
        for name, operation in operations.items():
            started = time.monotonic()
            async with asyncio.timeout(10):  # a hang fails the test instead of the run
                with pytest.raises(ObjectStoreError) as caught:
                    await operation()
            assert time.monotonic() - started < 5, name
            message = str(caught.value)
            assert "\n" not in message
            assert "testing-secret-value" not in message
            assert not isinstance(caught.value, ObjectNotFoundError)
    finally:
        await store.close()


@pytest.mark.s3
async def test_s3_upload_to_a_peer_that_stops_reading_fails_within_the_call_timeout(
    fake_aws: None, silent_endpoint: str
) -> None:
    timeouts = S3Timeouts(connect=0.5, read=30.0, max_attempts=1, call=1.0)
    store = S3ObjectStore(
        "bucket", endpoint_url=silent_endpoint, multipart_threshold=64 * MiB, timeouts=timeouts
    )
    await store.open()
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):  # a hang fails the test instead of the run
            with pytest.raises(ObjectStoreError, match="no answer within 1s"):
                await store.put("k", bytes(48 * MiB))  # far more than the socket buffers hold
    finally:
        await store.close()
    assert time.monotonic() - started < 5


def test_s3_from_url_takes_bucket_and_prefix(fake_aws: None) -> None:
    store = S3ObjectStore.from_url("s3://my-bucket/some/prefix/")
    assert (store.bucket, store.prefix) == ("my-bucket", "some/prefix")
    assert store.url == "s3://my-bucket/some/prefix"


@pytest.mark.parametrize("url", ["s3://my-bucket", "s3://my-bucket/", "s3://my-bucket//"])
def test_s3_from_url_without_prefix_stores_at_the_bucket_root(fake_aws: None, url: str) -> None:
    store = S3ObjectStore.from_url(url)
    assert (store.bucket, store.prefix, store.url) == ("my-bucket", "", "s3://my-bucket")


@pytest.mark.parametrize(
    "url",
    ["s3://", "s3:///prefix", "file:///x", "s3://key:secret@bucket/p", "s3://bucket/p?region=x"],
)
def test_s3_from_url_rejects_bad_urls_without_echoing_credentials(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        S3ObjectStore.from_url(url)
    assert "secret" not in str(caught.value)


def test_s3_endpoint_and_region_come_from_the_aws_environment(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:9000")
    assert S3ObjectStore.from_url("s3://b").endpoint_url == "http://generic:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:9000")
    assert S3ObjectStore.from_url("s3://b").endpoint_url == "http://s3-specific:9000"
    assert S3ObjectStore("b", endpoint_url="http://explicit").endpoint_url == "http://explicit"
    assert S3ObjectStore.from_url("s3://b").region == "us-east-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert S3ObjectStore.from_url("s3://b").region == "eu-west-3"
    assert S3ObjectStore("b", region="ap-south-1").region == "ap-south-1"


def test_s3_repr_names_the_location_but_no_credentials(fake_aws: None) -> None:
    text = repr(S3ObjectStore("b", "p", endpoint_url="http://127.0.0.1:9000"))
    assert "s3://b/p" in text
    assert "testing" not in text
    text = repr(S3ObjectStore("b", endpoint_url="http://user:hunter2@minio:9000"))
    assert "hunter2" not in text
    assert "minio:9000" in text
