"""The value codec: msgpack plus a few extensions, strict decoding, slots and claim checks."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import msgpack
import pytest

from aexec import codec
from aexec.codec import ObjectRef, Slot
from aexec.errors import CodecError

UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))

ROUND_TRIPS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -1.5,
    1e300,
    float("inf"),
    "",
    "héllo ✓",
    b"",
    b"\x00\xff binary",
    [],
    {},
    [1, [2, [3, {"a": [None, b"x"]}]]],
    {"nested": {"list": [1, 2.5, "three"], "bytes": b"\x01"}, "n": None},
    {1: "int keys", 2: "are kept"},
    dt.datetime(2024, 5, 17, 12, 30, 45, 123456),
    dt.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC),
    dt.datetime(2024, 5, 17, 12, 30, tzinfo=PLUS_TWO),
    dt.date(1999, 12, 31),
    dt.time(23, 59, 59, 999999),
    dt.time(8, 0, tzinfo=PLUS_TWO),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("1.10"),
    decimal.Decimal("-0"),
    decimal.Decimal("1E+1000"),
    decimal.Decimal("Infinity"),
    {1, "two", b"three", 4.0},
    set(),
    frozenset({1, 2, 3}),
    frozenset(),
    {frozenset({1}), frozenset({2, 3})},
    {"when": dt.date(2020, 1, 1), "ids": {uuid.UUID(int=7)}, "price": decimal.Decimal("9.99")},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_supported_values_round_trip_with_their_type(value: Any) -> None:
    decoded = codec.decode(codec.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_aware_datetime_keeps_its_offset() -> None:
    value = dt.datetime(2024, 1, 1, 9, 0, tzinfo=PLUS_TWO)
    decoded = codec.decode(codec.encode(value))
    assert decoded.utcoffset() == dt.timedelta(hours=2)


def test_naive_datetime_stays_naive() -> None:
    decoded = codec.decode(codec.encode(dt.datetime(2024, 1, 1, 9, 0)))
    assert decoded.tzinfo is None


def test_datetime_is_not_decoded_as_a_date() -> None:
    decoded = codec.decode(codec.encode([dt.datetime(2024, 1, 1, 9, 0), dt.date(2024, 1, 1)]))
    assert type(decoded[0]) is dt.datetime
    assert type(decoded[1]) is dt.date


def test_decimal_nan_round_trips() -> None:
    decoded = codec.decode(codec.encode(decimal.Decimal("NaN")))
    assert isinstance(decoded, decimal.Decimal)
    assert decoded.is_nan()


def test_float_nan_round_trips() -> None:
    decoded = codec.decode(codec.encode(float("nan")))
    assert decoded != decoded


def test_tuples_arrive_as_lists() -> None:
    assert codec.decode(codec.encode((1, (2, 3), {"t": ()}))) == [1, [2, 3], {"t": []}]


def test_a_set_of_tuples_round_trips() -> None:
    value = {(1, 2), ("a", (b"b", None))}
    assert codec.decode(codec.encode(value)) == value


def test_a_dict_with_tuple_keys_round_trips() -> None:
    value = {(1, 2): "a", ("x", ("y",)): [3, (4,)], "plain": {(5,): 6}}
    assert codec.decode(codec.encode(value)) == {
        (1, 2): "a",
        ("x", ("y",)): [3, [4]],
        "plain": {(5,): 6},
    }


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_ints_outside_the_msgpack_range_are_refused(value: int) -> None:
    with pytest.raises(CodecError, match="int"):
        codec.encode(value)


class Custom:
    pass


@pytest.mark.parametrize(
    "value",
    [Custom(), [1, {"deep": Custom()}], {Custom()}, frozenset({Custom()}), {"k": {1, Custom()}}],
    ids=["top-level", "nested", "in-a-set", "in-a-frozenset", "set-in-dict"],
)
def test_unencodable_values_raise_codec_error_naming_the_type(value: Any) -> None:
    with pytest.raises(CodecError, match="Custom"):
        codec.encode(value)


def test_check_encodable_raises_like_encode() -> None:
    codec.check_encodable({"fine": [1, 2]})
    with pytest.raises(CodecError, match="Custom"):
        codec.check_encodable([Custom()])


def test_self_referencing_values_raise_codec_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CodecError):
        codec.encode(loop)


def test_lone_surrogate_strings_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.encode("\ud800")


# -- strict decoding -------------------------------------------------------------------


def test_invalid_utf8_string_is_refused() -> None:
    body = b"\xa2\xff\xfe"  # fixstr of length 2 holding invalid UTF-8
    with pytest.raises(CodecError):
        codec.decode(body)


@pytest.mark.parametrize("cut", [1, 5, 10])
def test_truncated_body_is_refused(cut: int) -> None:
    body = codec.encode({"a": [1, 2, 3], "b": "some text here"})
    with pytest.raises(CodecError):
        codec.decode(body[:-cut])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(CodecError):
        codec.decode(codec.encode(1) + codec.encode(2))


def test_empty_body_is_refused() -> None:
    with pytest.raises(CodecError):
        codec.decode(b"")


@pytest.mark.parametrize("code", [0, 4, 15, 23, 100, 127])
def test_unknown_extension_code_is_refused(code: int) -> None:
    body = msgpack.packb([1, msgpack.ExtType(code, b"data")], use_bin_type=True)
    with pytest.raises(CodecError, match=f"extension type {code}"):
        codec.decode(body)


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (codec.EXT_DATETIME, b"not a date"),
        (codec.EXT_DATE, b"\xff"),
        (codec.EXT_TIME, b"25:00"),
        (codec.EXT_UUID, b"short"),
        (codec.EXT_DECIMAL, b"one point five"),
        (codec.EXT_SET, b"\xc1"),
        (codec.EXT_FROZENSET, codec.encode([{}])),  # unhashable member
        (codec.EXT_REF, b"\xff\xfe"),
        (codec.EXT_VALUE, b"\x92\x01"),  # truncated embedded value
    ],
)
def test_malformed_extension_payloads_are_refused(code: int, payload: bytes) -> None:
    body = msgpack.packb(msgpack.ExtType(code, payload), use_bin_type=True)
    with pytest.raises(CodecError):
        codec.decode(body)


def test_non_bytes_input_is_refused() -> None:
    with pytest.raises(CodecError):
        codec.decode("not bytes")  # type: ignore[arg-type]


def test_body_over_max_size_is_refused_before_decoding() -> None:
    # Garbage that would fail decoding: the size check must come first and say so.
    with pytest.raises(CodecError, match="exceeds the 8-byte limit"):
        codec.decode(b"\xc1" * 9, max_size=8)


def test_body_at_max_size_is_decoded() -> None:
    body = codec.encode("1234567")
    assert codec.decode(body, max_size=len(body)) == "1234567"


def test_decode_with_refs_refuses_bodies_over_the_default_limit() -> None:
    with pytest.raises(CodecError, match="limit"):
        codec.decode_with_refs(bytes(codec.DEFAULT_MAX_BODY + 1))


# -- call templates: slots and embedded values -----------------------------------------


def test_slots_decode_as_slots_without_inputs() -> None:
    template = codec.encode([[Slot(0), 5], {"x": Slot(1)}])
    assert codec.decode(template) == [[Slot(0), 5], {"x": Slot(1)}]


def test_slots_are_replaced_by_inputs() -> None:
    template = codec.encode([[Slot(1), "const"], {"items": [Slot(0), Slot(1)]}])
    decoded = codec.decode(template, inputs=[{"a": 1}, b"two"])
    assert decoded == [[b"two", "const"], {"items": [{"a": 1}, b"two"]}]


def test_slot_inputs_are_substituted_as_is_not_decoded() -> None:
    marker = object()
    assert codec.decode(codec.encode([Slot(0)]), inputs=[marker])[0] is marker


def test_slot_out_of_range_is_refused() -> None:
    with pytest.raises(CodecError, match="out of range"):
        codec.decode(codec.encode([Slot(2)]), inputs=["a", "b"])


def test_slot_equality_and_hash() -> None:
    assert Slot(3) == Slot(3)
    assert Slot(3) != Slot(4)
    assert Slot(3) != 3
    assert len({Slot(1), Slot(1), Slot(2)}) == 2
    assert repr(Slot(3)) == "Slot(3)"


def test_embedded_values_are_copied_not_reencoded() -> None:
    inner = codec.encode({"big": [1, 2, 3], "when": dt.date(2020, 2, 2)})
    outer = codec.encode({"embedded": codec.embed(inner), "other": 1})
    assert inner in outer
    assert codec.decode(outer) == {
        "embedded": {"big": [1, 2, 3], "when": dt.date(2020, 2, 2)},
        "other": 1,
    }


def test_embedded_values_can_nest() -> None:
    once = codec.encode(codec.embed(codec.encode([1, 2])))
    twice = codec.encode([codec.embed(once)])
    assert codec.decode(twice) == [[1, 2]]


# -- claim checks ----------------------------------------------------------------------


def test_object_refs_round_trip() -> None:
    value = {"out": ObjectRef("outputs/run/step/1"), "n": 1}
    assert codec.decode(codec.encode(value)) == value


def test_object_ref_equality_and_hash() -> None:
    assert ObjectRef("k") == ObjectRef("k")
    assert ObjectRef("k") != ObjectRef("j")
    assert ObjectRef("k") != "k"
    assert len({ObjectRef("k"), ObjectRef("k")}) == 1
    assert repr(ObjectRef("k")) == "ObjectRef('k')"


def test_decode_with_refs_reports_whether_refs_are_present() -> None:
    assert codec.decode_with_refs(codec.encode([1, {"a": "b"}])) == ([1, {"a": "b"}], False)
    value, has_refs = codec.decode_with_refs(codec.encode([1, {"a": ObjectRef("k")}]))
    assert value == [1, {"a": ObjectRef("k")}]
    assert has_refs is True


def test_decode_with_refs_sees_refs_inside_embedded_values() -> None:
    body = codec.encode([codec.embed(codec.encode(ObjectRef("k")))])
    assert codec.decode_with_refs(body) == ([ObjectRef("k")], True)


def test_decode_with_refs_substitutes_inputs() -> None:
    body = codec.encode([Slot(0)])
    assert codec.decode_with_refs(body, inputs=[ObjectRef("k")]) == ([ObjectRef("k")], False)


def test_decode_with_refs_refuses_malformed_bodies() -> None:
    with pytest.raises(CodecError):
        codec.decode_with_refs(b"\x92\x01")


def test_map_refs_replaces_every_ref_and_keeps_the_rest() -> None:
    value = [ObjectRef("a"), {"x": ObjectRef("b"), "y": [1, ObjectRef("a")]}, "s", 2]
    resolved = codec.map_refs(value, lambda ref: f"<{ref.key}>")
    assert resolved == ["<a>", {"x": "<b>", "y": [1, "<a>"]}, "s", 2]
    assert value[0] == ObjectRef("a")  # the input is not mutated


def test_map_refs_on_a_bare_ref() -> None:
    assert codec.map_refs(ObjectRef("k"), lambda ref: 42) == 42


def test_collect_refs_finds_every_ref_in_order() -> None:
    value = [ObjectRef("a"), {"x": ObjectRef("b"), "y": [1, ObjectRef("c")]}, "s"]
    assert codec.collect_refs(value, []) == [ObjectRef("a"), ObjectRef("b"), ObjectRef("c")]
    assert codec.collect_refs("plain", []) == []


def test_collect_refs_appends_to_the_given_list() -> None:
    into = [ObjectRef("first")]
    result = codec.collect_refs(ObjectRef("second"), into)
    assert result is into
    assert into == [ObjectRef("first"), ObjectRef("second")]
