"""The page's veil-v3 code, run in Chromium, against tests/vectors/veil-v3.json: it opens the
Python-sealed request and reproduces every byte of the three-chunk answer; Python's node side
opens the request the page seals; and the page's opener refuses each kind of tampered stream
with the check that failed. X-Wing (@hpke/hybridkem-x-wing, KEM 0x647a) is shown equal to
cryptography's MLKEM768_X25519 by opening each other's ciphertexts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.web.browser import Page
from veil.hazmat import v3
from veil.wire.envelopes import ConfidentialComputeRequest

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "veil-v3.json").read_text()
)["vectors"]
SCRIPT = (Path(__file__).resolve().parent / "vectors.js").read_text()
KEM_IDS = {"mlkem768-x25519": 0x647A, "x25519": 0x0020}


@pytest.fixture(scope="module")
def results(browser: Any, console_url: str) -> dict[str, dict[str, Any]]:
    page: Page = browser.page()
    try:
        page.goto(console_url)
        return {v["kem"]: page.evaluate(SCRIPT, {"vector": v}) for v in VECTORS}
    finally:
        page.close()


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_the_page_opens_the_python_request(vector: dict[str, Any], results: dict[str, Any]) -> None:
    got = results[vector["kem"]]
    assert got["kem_id"] == KEM_IDS[vector["kem"]]
    assert got["info"] == vector["info"]
    assert got["key_id"] == vector["key_id"]
    assert got["opened_secret"] == vector["response_secret"]
    assert got["opened_body"] == vector["body"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_python_opens_the_request_the_page_seals(
    vector: dict[str, Any], results: dict[str, Any]
) -> None:
    sealed = results[vector["kem"]]["envelope"]
    expected = vector["request_envelope"]
    for name in ("model_name", "node_dh_public_key", "stack_small_id", "num_compute_units",
                 "stream", "protocol", "key_id", "request_id", "timestamp", "kem",
                 "reservation_id"):  # fmt: skip
        assert sealed[name] == expected[name], name
    assert sealed["ciphertext"] != expected["ciphertext"]  # fresh HPKE encapsulation
    kem = v3.Kem(vector["kem"])
    key = v3.NodeKemKey.from_seed(kem, bytes.fromhex(vector["node_key_seed"]))
    envelope = ConfidentialComputeRequest.model_validate(sealed)
    body, session = v3.open_request(
        envelope,
        lambda kid: key if kid == key.key_id else None,
        endpoint=vector["endpoint"],
        allowed_kems=frozenset(v3.Kem),
        reservation_id=expected["reservation_id"],
        now=expected["timestamp"],
    )
    assert body.decode() == vector["body"]
    assert session.request_id == bytes(range(16))


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_the_page_reproduces_the_answer_byte_for_byte(
    vector: dict[str, Any], results: dict[str, Any]
) -> None:
    got = results[vector["kem"]]
    for mine, theirs in zip(got["chunks"], vector["response_chunks"], strict=True):
        want = {k: v for k, v in theirs["response"].items()}
        assert mine == want
    assert got["plaintexts"] == [c["plaintext"] for c in vector["response_chunks"]]
    assert got["usage"] == vector["usage"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_the_page_refuses_tampered_answers_naming_the_check(
    vector: dict[str, Any], results: dict[str, Any]
) -> None:
    assert results[vector["kem"]]["tampered"] == {
        "flipped": "decryption",
        "dropped": "stream-order",
        "truncated": "truncated",
        "reordered": "stream-order",
        "signature": "signature",
        "usage": "signature",  # the usage is covered by the one signature
        "hash": "response-hash",  # an intact chunk under another chunk's running hash
        "duplicated": "stream-order",
        "whole": "accepted",
    }
