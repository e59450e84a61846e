"""What the suites share (veil.hazmat.common): the canonical metadata encoding, the per-chunk
nonce, and the stream errors."""

from __future__ import annotations

import base64
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.hazmat import common, v3
from veil.hazmat.common import (
    MAX_CHUNK_INDEX,
    ResponseHashMismatch,
    StreamOrderError,
    canonical_json,
    chunk_nonce,
)
from veil.wire.errors import DecryptionFailed, InvalidBody

# -- canonical_json --------------------------------------------------------------------------------


def test_keys_are_sorted_and_separators_compact() -> None:
    assert canonical_json({"b": 1, "a": 2, "c": {"z": 0, "y": [1, 2]}}) == (
        b'{"a":2,"b":1,"c":{"y":[1,2],"z":0}}'
    )
    assert canonical_json({}) == b"{}"


def test_values_have_one_spelling() -> None:
    encoded = canonical_json(
        {"none": None, "yes": True, "no": False, "big": 2**63 - 1, "neg": -7, "zero": 0}
    )
    assert (
        encoded
        == b'{"big":9223372036854775807,"neg":-7,"no":false,"none":null,"yes":true,"zero":0}'
    )


def test_bytes_are_standard_padded_base64() -> None:
    raw = b"\xfb\xff\xfe" + bytes(range(4))  # '+' and '/' in standard base64, '=' padding
    encoded = canonical_json({"id": raw})
    value = json.loads(encoded)["id"]
    assert value == base64.b64encode(raw).decode() and value.endswith("=")
    assert "+" in value or "/" in value
    assert canonical_json({"request_id": bytes(range(16))}) == (
        b'{"request_id":"AAECAwQFBgcICQoLDA0ODw=="}'
    )


def test_non_ascii_text_is_utf8_not_escaped() -> None:
    encoded = canonical_json({"model": "modèle-日本"})
    assert encoded == '{"model":"modèle-日本"}'.encode()
    assert b"\\u" not in encoded


@pytest.mark.parametrize(
    "fields",
    [{"x": math.nan}, {"x": math.inf}, {"x": "\ud800"}, {"x": object()}, {"x": {1.5j}}],
    ids=["nan", "inf", "lone-surrogate", "object", "set"],
)
def test_what_has_no_canonical_form_is_a_bad_request(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidBody, match="canonically encoded"):
        canonical_json(fields)


@given(
    st.dictionaries(
        st.text(max_size=8),
        st.none() | st.booleans() | st.integers() | st.text(max_size=16) | st.binary(max_size=24),
        max_size=8,
    )
)
def test_the_encoding_is_a_function_of_the_fields_not_their_order(
    fields: dict[str, object],
) -> None:
    encoded = canonical_json(fields)
    assert canonical_json(dict(reversed(list(fields.items())))) == encoded
    decoded = json.loads(encoded)
    assert list(decoded) == sorted(decoded)
    for key, value in fields.items():
        expected = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        assert decoded[key] == expected


# -- chunk_nonce -----------------------------------------------------------------------------------


def test_chunk_nonce_is_base_xor_index() -> None:
    base = bytes.fromhex("00112233445566778899aabb")
    assert chunk_nonce(base, 0) == base
    assert chunk_nonce(base, 1) == bytes.fromhex("00112233445566778899aaba")
    assert chunk_nonce(base, 0x0102) == bytes.fromhex("00112233445566778899abb9")
    top = chunk_nonce(bytes(12), MAX_CHUNK_INDEX)
    assert top == bytes(4) + b"\x7f" + b"\xff" * 7


@given(st.binary(min_size=12, max_size=12), st.integers(0, MAX_CHUNK_INDEX))
def test_chunk_nonces_are_distinct_and_invertible(base: bytes, index: int) -> None:
    nonce = chunk_nonce(base, index)
    assert len(nonce) == 12
    assert int.from_bytes(nonce, "big") ^ int.from_bytes(base, "big") == index
    assert chunk_nonce(base, index ^ 1) != nonce


@pytest.mark.parametrize("index", [-1, MAX_CHUNK_INDEX + 1, 2**96])
def test_chunk_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        chunk_nonce(bytes(12), index)


@pytest.mark.parametrize("size", [0, 11, 13, 32])
def test_base_nonce_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        chunk_nonce(bytes(size), 0)


# -- the stream errors -----------------------------------------------------------------------------


def test_stream_errors_are_decryption_failures_and_v3_raises_these_very_classes() -> None:
    assert issubclass(StreamOrderError, DecryptionFailed)
    assert issubclass(ResponseHashMismatch, DecryptionFailed)
    assert not issubclass(StreamOrderError, ResponseHashMismatch)
    assert v3.StreamOrderError is StreamOrderError
    assert v3.ResponseHashMismatch is ResponseHashMismatch
    assert set(common.__all__) == {
        "MAX_CHUNK_INDEX",
        "ResponseHashMismatch",
        "StreamOrderError",
        "canonical_json",
        "chunk_nonce",
    }
