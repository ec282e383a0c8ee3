"""msgpack encoding of step values and wire messages; no pickle anywhere.

Values are plain msgpack (None, bool, int, float, str, bytes, list, dict; tuples arrive as
lists, except as set members and dict keys, where they stay tuples) plus these extensions:
``datetime``, ``date``, ``time``, ``UUID``, ``Decimal``, ``set`` and ``frozenset``.
Decoding is strict: strings must be UTF-8, and an extension code this module does not
know is rejected instead of decoded silently.

Three extension codes are internal plumbing:

* ``EXT_SLOT`` — in a step's call template, "the value of input number N";
* ``EXT_VALUE`` — an already-encoded value embedded as-is (no re-encoding on the way);
* ``EXT_REF`` — a claim check: the value lives in the object store under this key;
* ``EXT_DIRECTIVE`` — a step's decision instead of an output (:mod:`aexec.directives`),
  read by the coordinator with :func:`directive_of`;
* ``EXT_PARAM`` — in the plan of a child run (``run_as_child=True``), "the value of the
  run's parameter NAME", known only when the run is created (:func:`fill_params`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from aexec import directives
from aexec.config import MAX_MESSAGE_SIZE
from aexec.errors import CodecError

EXT_SLOT = 1
EXT_VALUE = 2
EXT_REF = 3
EXT_DIRECTIVE = 5
EXT_PARAM = 6
EXT_DATETIME = 16
EXT_DATE = 17
EXT_TIME = 18
EXT_UUID = 19
EXT_DECIMAL = 20
EXT_SET = 21
EXT_FROZENSET = 22

DEFAULT_MAX_BODY = MAX_MESSAGE_SIZE
"""Bodies larger than this are refused before decoding unless the caller allows more (values
loaded from the object store are held to ``Settings.max_value_size`` instead)."""

ExtType = msgpack.ExtType


class ObjectRef:
    """A value stored in the object store under ``key`` (a claim check)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("ObjectRef", self.key))

    def __repr__(self) -> str:
        return f"ObjectRef({self.key!r})"


class Slot:
    """Placeholder for input number ``index`` inside a call template."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Slot) and other.index == self.index

    def __hash__(self) -> int:
        return hash(("Slot", self.index))

    def __repr__(self) -> str:
        return f"Slot({self.index})"


class Param:
    """Placeholder for the value of parameter ``name`` inside a child run's plan."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Param) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Param", self.name))

    def __repr__(self) -> str:
        return f"Param({self.name!r})"


_SLOTS = [ExtType(EXT_SLOT, i.to_bytes(4, "big")) for i in range(64)]


def slot(index: int) -> Any:
    """The encodable placeholder for input ``index`` (what :class:`Slot` encodes to)."""
    if index < len(_SLOTS):
        return _SLOTS[index]
    return ExtType(EXT_SLOT, index.to_bytes(4, "big"))


def _default(obj: Any) -> Any:
    # datetime before date: datetime is a subclass of date.
    if isinstance(obj, dt.datetime):
        return ExtType(EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return ExtType(EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, dt.time):
        return ExtType(EXT_TIME, obj.isoformat().encode())
    if isinstance(obj, uuid.UUID):
        return ExtType(EXT_UUID, obj.bytes)
    if isinstance(obj, decimal.Decimal):
        return ExtType(EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, frozenset):
        return ExtType(EXT_FROZENSET, _pack(list(obj)))
    if isinstance(obj, set):
        return ExtType(EXT_SET, _pack(list(obj)))
    if isinstance(obj, Slot):
        return ExtType(EXT_SLOT, obj.index.to_bytes(4, "big"))
    if isinstance(obj, ObjectRef):
        return ExtType(EXT_REF, obj.key.encode())
    if isinstance(obj, Param):
        return ExtType(EXT_PARAM, obj.name.encode())
    if isinstance(obj, directives.Skip | directives.Cached | directives.Again):
        return ExtType(EXT_DIRECTIVE, _pack(obj.to_wire()))
    raise TypeError(f"cannot encode object of type {type(obj).__qualname__}")


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def encode(value: Any) -> bytes:
    """Encode ``value``; raise :class:`CodecError` naming the type that cannot be encoded."""
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(str(exc)) from exc


def check_encodable(value: Any) -> None:
    """Raise :class:`CodecError` if ``value`` cannot be encoded."""
    encode(value)


class _Decoder:
    """One decoding pass: substitutes slots and embedded values, collects references."""

    __slots__ = ("inputs", "refs")

    def __init__(self, inputs: Sequence[Any] | None) -> None:
        self.inputs = inputs
        self.refs = False

    def hook(self, code: int, data: bytes) -> Any:
        if code == EXT_VALUE:
            return self.unpack(data)
        if code == EXT_REF:
            self.refs = True
            return ObjectRef(data.decode())
        if code == EXT_SLOT:
            index = int.from_bytes(data, "big")
            if self.inputs is None:
                return Slot(index)
            if index >= len(self.inputs):
                raise CodecError(f"input slot {index} out of range ({len(self.inputs)} inputs)")
            return self.inputs[index]
        if code == EXT_PARAM:
            return Param(data.decode())
        if code == EXT_DIRECTIVE:
            try:
                return directives.from_wire(self.unpack(data))
            except ValueError as exc:
                raise CodecError(str(exc)) from None
        if code == EXT_DATETIME:
            return dt.datetime.fromisoformat(data.decode())
        if code == EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == EXT_TIME:
            return dt.time.fromisoformat(data.decode())
        if code == EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code == EXT_SET:
            return set(map(_hashable, self.unpack(data)))
        if code == EXT_FROZENSET:
            return frozenset(map(_hashable, self.unpack(data)))
        raise CodecError(f"unknown msgpack extension type {code}")

    def unpack(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=False, ext_hook=self.hook, timestamp=3
            )
        except TypeError:
            # A tuple map key arrives as an unhashable list: decode again (slow path only
            # for such bodies), turning list keys back into tuples.
            return msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                ext_hook=self.hook,
                timestamp=3,
                object_pairs_hook=_dict_with_hashable_keys,
            )


def _hashable(value: Any) -> Any:
    """Turn lists back into tuples where a hashable value is needed (set members, map keys)."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _dict_with_hashable_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(k): v for k, v in pairs}


def decode(
    data: bytes, *, inputs: Sequence[Any] | None = None, max_size: int = DEFAULT_MAX_BODY
) -> Any:
    """Decode ``data`` strictly.

    ``inputs`` fills ``EXT_SLOT`` placeholders; without it they decode to :class:`Slot`.
    ``EXT_REF`` decodes to :class:`ObjectRef` (see :func:`decode_with_refs`).
    """
    if len(data) > max_size:
        raise CodecError(f"body of {len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        return _Decoder(inputs).unpack(data)
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on bad input
        raise CodecError(f"cannot decode body: {type(exc).__name__}: {exc}") from exc


def check_decodable(data: bytes) -> None:
    """Raise :class:`CodecError` unless ``data`` decodes strictly (a step's output, checked
    before it is recorded: bytes that cannot be decoded would break its dependents and the
    run's result)."""
    decode(data)


EXT_HEADS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
"""First bytes of a msgpack extension value (ext 8/16/32, fixext 1..16)."""


def directive_of(output: bytes) -> directives.Directive | None:
    """The directive a step returned as its encoded ``output``, or None for an ordinary
    value (decided from the first byte for all but extension values)."""
    if not output or output[0] not in EXT_HEADS:
        return None
    try:
        value = decode(output)
    except CodecError:
        return None
    return (
        value if isinstance(value, directives.Skip | directives.Cached | directives.Again) else None
    )


def decode_with_refs(
    data: bytes, *, inputs: Sequence[Any] | None = None, max_size: int = DEFAULT_MAX_BODY
) -> tuple[Any, bool]:
    """Decode ``data`` (at most ``max_size`` bytes) and tell whether it holds any
    :class:`ObjectRef`."""
    if len(data) > max_size:
        raise CodecError(f"body of {len(data)} bytes exceeds the {max_size}-byte limit")
    decoder = _Decoder(inputs)
    try:
        return decoder.unpack(data), decoder.refs
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"cannot decode body: {type(exc).__name__}: {exc}") from exc


def embed(encoded: bytes) -> Any:
    """Wrap already-encoded bytes so that packing them again copies, not re-encodes."""
    return ExtType(EXT_VALUE, encoded)


def fill_params(data: bytes, values: Mapping[str, Any]) -> bytes:
    """``data`` (a call template or a result template) with each :class:`Param` placeholder
    replaced by its value in ``values`` (an encodable value, or an :func:`embed`); slots,
    claim checks and everything else stay as they are.  A :class:`CodecError` for a
    parameter ``values`` lacks."""
    if bytes([EXT_PARAM]) not in data:  # a quick test: no placeholder in it can be there
        return data

    def fill(value: Any) -> Any:
        if isinstance(value, Param):
            if value.name not in values:
                raise CodecError(f"no value for parameter {value.name!r}")
            return values[value.name]
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return encode(fill(decode(data, max_size=len(data))))


def map_refs(value: Any, resolve: Callable[[ObjectRef], Any]) -> Any:
    """Return ``value`` with every :class:`ObjectRef` inside replaced by ``resolve(ref)``."""
    if isinstance(value, ObjectRef):
        return resolve(value)
    if isinstance(value, list):
        return [map_refs(v, resolve) for v in value]
    if isinstance(value, dict):
        return {k: map_refs(v, resolve) for k, v in value.items()}
    return value


def collect_refs(value: Any, into: list[ObjectRef]) -> list[ObjectRef]:
    """Append every :class:`ObjectRef` inside ``value`` to ``into``."""
    if isinstance(value, ObjectRef):
        into.append(value)
    elif isinstance(value, list):
        for v in value:
            collect_refs(v, into)
    elif isinstance(value, dict):
        for v in value.values():
            collect_refs(v, into)
    return into
