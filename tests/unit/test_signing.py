"""Signed message framing: what verifies, what does not, and why an unsigned body never can."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aexec import messages
from aexec.errors import CodecError
from aexec.transport.signed import (
    BAD_SIGNATURE,
    HEADER_SIZE,
    MAGIC,
    UNSIGNED,
    derive_key,
    sign,
    unframe,
    verify,
)

KEY = derive_key("correct horse battery staple")
BODY = messages.Control("terminate").encode()


def test_a_signed_body_verifies_for_its_destination_and_gives_back_the_payload() -> None:
    signed = sign(KEY, "q:step.default", BODY)
    assert signed.startswith(MAGIC) and len(signed) == HEADER_SIZE + len(BODY)
    assert verify(KEY, "q:step.default", signed) == (BODY, "")


@pytest.mark.parametrize("position", [0, 1, 2, 3, 10, HEADER_SIZE - 1, HEADER_SIZE, -1])
def test_a_body_with_any_byte_changed_does_not_verify(position: int) -> None:
    signed = bytearray(sign(KEY, "q:step.default", BODY))
    signed[position] ^= 0x01
    payload, reason = verify(KEY, "q:step.default", bytes(signed))
    assert payload is None and reason in (UNSIGNED, BAD_SIGNATURE)


def test_a_body_signed_with_another_secret_does_not_verify() -> None:
    signed = sign(derive_key("another secret"), "q:step.default", BODY)
    assert verify(KEY, "q:step.default", signed) == (None, BAD_SIGNATURE)


def test_a_body_signed_for_another_queue_or_a_topic_does_not_verify_here() -> None:
    assert verify(KEY, "q:step.default", sign(KEY, "q:step.gpu", BODY)) == (None, BAD_SIGNATURE)
    assert verify(KEY, "q:control", sign(KEY, "t:control", BODY)) == (None, BAD_SIGNATURE)


@pytest.mark.parametrize("body", [BODY, b"", MAGIC, MAGIC + b"short", b"\x00" * 64])
def test_unsigned_or_truncated_bodies_are_refused_as_unsigned(body: bytes) -> None:
    assert verify(KEY, "q:step.default", body) == (None, UNSIGNED)


def test_a_signed_body_is_not_a_message_to_a_consumer_without_the_secret() -> None:
    with pytest.raises(CodecError):
        messages.decode(sign(KEY, "q:step.default", BODY))


def test_unframe_takes_the_framing_off_without_checking_and_leaves_other_bodies() -> None:
    assert unframe(sign(derive_key("x"), "q:a", BODY)) == BODY
    assert unframe(BODY) == BODY


def test_the_key_depends_on_the_secret_and_is_not_the_secret() -> None:
    assert derive_key("a") != derive_key("b")
    assert derive_key("a") != b"a"


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(values)
def test_no_msgpack_body_starts_with_the_signature_marker(value: object) -> None:
    assert msgpack.packb(value, use_bin_type=True)[:1] != MAGIC[:1]
