"""The evidence document and the report_data binding of PROTOCOL.md section 6."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from pydantic import ValidationError

from veil.attestation.evidence import (
    Evidence,
    EvidenceError,
    gpu_digest,
    gpu_nonce,
    report_data,
)

X = bytes(range(32))
ED = bytes(range(32, 64))
NONCE = b"n" * 32


def test_report_data_is_sha512_of_label_keys_gpu_digest_and_nonce() -> None:
    no_gpus = hashlib.sha256(b"veil gpus").digest()
    expected = hashlib.sha512(b"veil-v2 report" + X + ED + no_gpus + NONCE).digest()
    assert report_data(X, ED, NONCE) == expected
    assert len(expected) == 64


def test_gpu_evidence_is_bound_by_its_digest_and_signs_a_nonce_bound_to_the_keys() -> None:
    one = gpu_digest([(b"report", b"chain")])
    framed = b"veil gpus" + b"\0\0\0\x06report" + b"\0\0\0\x05chain"
    assert one == hashlib.sha256(framed).digest()
    # Moving bytes between report and chain, or reordering GPUs, changes the digest.
    assert gpu_digest([(b"repor", b"tchain")]) != one
    pair = [(b"a", b"1"), (b"b", b"2")]
    assert gpu_digest(pair) != gpu_digest(pair[::-1])
    assert report_data(X, ED, NONCE, one) != report_data(X, ED, NONCE)
    assert gpu_nonce(X, ED, NONCE) == hashlib.sha256(b"veil gpu nonce" + X + ED + NONCE).digest()
    assert gpu_nonce(X, ED, b"m" * 32) != gpu_nonce(X, ED, NONCE)


def test_report_data_changes_with_each_input() -> None:
    base = report_data(X, ED, NONCE)
    assert report_data(ED, X, NONCE) != base
    assert report_data(X, ED, b"m" * 32) != base


@pytest.mark.parametrize(
    ("x", "ed", "nonce", "named"),
    [
        (X[:31], ED, NONCE, "x25519_public_key"),
        (X, ED + b"\0", NONCE, "ed25519_public_key"),
        (X, ED, b"short", "nonce"),
        (X, ED, b"n" * 65, "nonce"),
    ],
)
def test_wrong_sizes_are_refused_by_name(x: bytes, ed: bytes, nonce: bytes, named: str) -> None:
    with pytest.raises(EvidenceError, match=named):
        report_data(x, ed, nonce)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "format": "tdx",
        "report_data": b64(report_data(X, ED, NONCE)),
        "nonce": b64(NONCE),
        "x25519_public_key": b64(X),
        "ed25519_public_key": b64(ED),
        "quote": b64(b"quote bytes"),
        "collateral": {"tcb_info": "{}"},
        "warning": None,
    }
    document.update(changes)
    return document


def test_document_round_trips_through_json_byte_for_byte() -> None:
    evidence = Evidence.model_validate(_document())
    again = Evidence.model_validate(json.loads(evidence.to_json()))
    assert again == evidence
    defaults = {
        "vcek": None,
        "cert_chain": None,
        "event_log": None,
        "gpus": [],
        "release": None,
    }
    assert json.loads(evidence.to_json()) == {**_document(), **defaults}
    assert evidence.expected_report_data() == evidence.report_data


def test_report_data_must_be_64_bytes() -> None:
    with pytest.raises(ValidationError, match="report_data"):
        Evidence.model_validate(_document(report_data=base64.b64encode(b"x" * 32).decode()))


def test_bad_base64_is_refused() -> None:
    with pytest.raises(ValidationError, match="x25519_public_key"):
        Evidence.model_validate(_document(x25519_public_key="not base64!"))


def test_format_none_cannot_carry_a_quote_and_others_must() -> None:
    with pytest.raises(ValidationError, match="cannot carry a quote"):
        Evidence.model_validate(_document(format="none"))
    with pytest.raises(ValidationError, match="must carry a quote"):
        Evidence.model_validate(_document(quote=None))
    with pytest.raises(ValidationError, match="format"):
        Evidence.model_validate(_document(format="sgx"))


# -- veil-v3: the post-quantum key in the binding -------------------------------------------------

KEM = bytes(range(256)) * 4 + bytes(range(192))  # 1216 bytes: an ML-KEM-768 + X25519 key's size


def test_v3_report_data_adds_the_digest_of_the_kem_key_before_the_gpus_and_the_nonce() -> None:
    no_gpus = hashlib.sha256(b"veil gpus").digest()
    kem_digest = hashlib.sha256(KEM).digest()
    expected = hashlib.sha512(b"veil-v3 report" + X + ED + kem_digest + no_gpus + NONCE).digest()
    assert report_data(X, ED, NONCE, kem_public_key=KEM) == expected
    assert report_data(X, ED, NONCE, kem_public_key=KEM) != report_data(X, ED, NONCE)
    other = KEM[:-1] + b"\x01"
    assert report_data(X, ED, NONCE, kem_public_key=other) != expected


def test_a_kem_key_of_the_wrong_size_is_refused_by_name() -> None:
    with pytest.raises(EvidenceError, match="kem_public_key must be 1216 bytes"):
        report_data(X, ED, NONCE, kem_public_key=KEM[:-1])
    with pytest.raises(ValidationError):
        Evidence.model_validate(
            {**_document(), "kem_public_key": base64.b64encode(KEM[:32]).decode()}
        )


def test_a_v3_document_round_trips_and_a_classical_one_serializes_without_a_kem_field() -> None:
    classical = Evidence.model_validate(_document())  # no post-quantum key
    assert "kem_public_key" not in json.loads(classical.to_json())
    bound = report_data(X, ED, NONCE, kem_public_key=KEM)
    v3 = Evidence.model_validate(
        {
            **_document(),
            "kem_public_key": base64.b64encode(KEM).decode(),
            "report_data": base64.b64encode(bound).decode(),
        }
    )
    assert Evidence.model_validate(json.loads(v3.to_json())) == v3
    assert v3.expected_report_data() == bound == v3.report_data
    assert "veil-v3 report" in v3.binding_formula and "veil-v2 report" in classical.binding_formula
