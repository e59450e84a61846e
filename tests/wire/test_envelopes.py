"""Strict validation of the wire models: base64, sizes, types; round trips byte for byte."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse


def b64(n: int, fill: int = 7) -> str:
    return base64.b64encode(bytes([fill]) * n).decode()


def envelope(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "ciphertext": b64(40),
        "client_dh_public_key": b64(32, 1),
        "model_name": "smollm2-135m-instruct",
        "node_dh_public_key": b64(32, 2),
        "nonce": b64(12),
        "plaintext_body_hash": b64(32),
        "salt": b64(16),
        "stack_small_id": 3,
        "num_compute_units": 64,
        "stream": False,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def test_valid_envelope_round_trips_exactly() -> None:
    body = envelope()
    parsed = ConfidentialComputeRequest.model_validate(body)
    assert parsed.salt == bytes([7]) * 16
    assert json.loads(parsed.model_dump_json()) == body


def test_optional_fields_may_be_null_or_absent_and_unknown_fields_are_ignored() -> None:
    parsed = ConfidentialComputeRequest.model_validate(
        envelope(num_compute_units=None, stream=..., protocol="veil-v3", x_future_field=1)
    )
    assert parsed.num_compute_units is None and parsed.stream is None
    assert parsed.protocol == "veil-v3" and not hasattr(parsed, "x_future_field")
    assert "x_future_field" not in parsed.model_dump_json()


@pytest.mark.parametrize("protocol", ["atoma-v1", "veil-v3"])
def test_the_protocols_spoken(protocol: str) -> None:
    assert (
        ConfidentialComputeRequest.model_validate(envelope(protocol=protocol)).protocol == protocol
    )


@pytest.mark.parametrize("protocol", ["veil-v2", "veil-v9", "", "VEIL-V3", 3])
def test_a_retired_or_unknown_protocol_fails_validation(protocol: object) -> None:
    """veil-v2 is retired: an envelope that names it is refused like any unknown protocol."""
    with pytest.raises(ValidationError) as info:
        ConfidentialComputeRequest.model_validate(envelope(protocol=protocol))
    (error,) = info.value.errors()
    assert error["loc"] == ("protocol",) and error["type"] == "literal_error"
    assert error["ctx"]["expected"] == "'atoma-v1' or 'veil-v3'"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("salt", b64(15), "exactly 16"),
        ("nonce", b64(16), "exactly 12"),
        ("client_dh_public_key", b64(31), "exactly 32"),
        ("node_dh_public_key", b64(33), "exactly 32"),
        ("plaintext_body_hash", b64(64), "exactly 32"),
        ("ciphertext", b64(8), "at least 16"),
        ("salt", "not base64!!", "base64"),
        ("salt", b64(16).rstrip("="), "base64"),
        ("nonce", base64.urlsafe_b64encode(b"\xfb\xff" * 6).decode(), "base64"),
        ("salt", 12345, "base64"),
        ("stack_small_id", "3", "integer"),
        ("stack_small_id", -1, "greater than or equal"),
        ("stack_small_id", 2**64, "less than or equal"),
        ("num_compute_units", 1.5, "integer"),
        ("stream", "yes", "boolean"),
        ("model_name", "", "at least 1"),
    ],
)
def test_bad_fields_are_named_in_the_error(field: str, value: object, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        ConfidentialComputeRequest.model_validate(envelope(**{field: value}))
    text = str(info.value)
    assert field in text and needle in text


@pytest.mark.parametrize(
    "missing",
    [
        "ciphertext",
        "client_dh_public_key",
        "model_name",
        "node_dh_public_key",
        "nonce",
        "plaintext_body_hash",
        "salt",
        "stack_small_id",
    ],
)
def test_each_required_field_is_required(missing: str) -> None:
    with pytest.raises(ValidationError, match=missing):
        ConfidentialComputeRequest.model_validate(envelope(**{missing: ...}))


def test_response_signature_must_be_64_bytes() -> None:
    with pytest.raises(ValidationError, match="exactly 64"):
        ConfidentialComputeResponse.model_validate(
            {"ciphertext": b64(20), "nonce": b64(12), "signature": b64(63)}
        )


@given(st.binary(min_size=16, max_size=300), st.binary(min_size=12, max_size=12))
def test_any_bytes_round_trip_through_base64(ciphertext: bytes, nonce: bytes) -> None:
    sealed = ConfidentialComputeResponse(ciphertext=ciphertext, nonce=nonce)
    again = ConfidentialComputeResponse.model_validate_json(sealed.model_dump_json())
    assert again.ciphertext == ciphertext and again.nonce == nonce
