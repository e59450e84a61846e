"""docs/PROTOCOL.md is kept true by the code and the vectors.

The document states its constants in fenced blocks (``veil-constants``: a code name and its value;
``veil-facts``: what no single constant states; ``veil-v3-info``: the fields of veil-v3's HPKE
``info``; ``veil-v3-info-example``: one vector's ``info``), and its routes, envelope, lock and error
fields in tables. These tests parse them and check each against the module it names, the node's
keyring and ``tests/vectors/veil-v3.json``: the veil-v3 answer is recomputed from the document's
labels and sizes alone, and the request is opened with the HPKE suite the document's ids name (each
id proved by the IETF vectors in ``cryptography-vectors``). An edit of the document that no longer
matches the bytes fails here, and so does a change of the code the document did not follow.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib
import json
import re
import typing
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ValidationError

from veil.attestation import evidence
from veil.hazmat.kem import Kem, NodeKemKey
from veil.hazmat.v3.schedule import SUITES
from veil.node.keyring import Keyring
from veil.wire.envelopes import (
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
    KemName,
    NodesCreateLockResponse,
    Protocol,
)
from veil.wire.errors import ALL_ERRORS
from veil.wire.keyid import key_id
from veil.wire.routes import ROUTES
from veil.wire.tickets import ReceiptQuery, Ticket, UsageReceipt

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "PROTOCOL.md"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "veil-v3.json").read_text())["vectors"]
HPKE_VECTORS = files("cryptography_vectors") / "HPKE"


def _names(text: str) -> set[str]:
    return set(text.split())


# Every fact the document must state (a fact dropped, or added unchecked, fails).
FACTS = _names(
    """
    keyid.hash keyid.bytes xwing.seed_expansion xwing.expanded_bytes xwing.mlkem_seed_bytes
    hpke.mode hpke.kem_id.mlkem768-x25519 hpke.kem_id.x25519 hpke.kdf_id hpke.aead_id
    hpke.enc_size.mlkem768-x25519 hpke.enc_size.x25519 kem.public_key_size.mlkem768-x25519
    kem.public_key_size.x25519 v3.response_key_bytes v3.response_okm_bytes v3.chunk_index_bytes
    v3.chunk_final_bytes v3.hash envelope.protocols envelope.kems ticket.fields receipt.fields
    receipt_query.fields
    """
)

# The code constants the document must state (it may state more: each is checked).
REQUIRED_CONSTANTS = _names(
    """
    veil.hazmat.v1.SUITE veil.hazmat.v1.KEY_SIZE veil.hazmat.v3.schedule.SUITE
    veil.hazmat.v3.schedule.SECRET_SIZE veil.hazmat.v3.schedule.REQUEST_LABEL
    veil.hazmat.v3.schedule.RESPONSE_LABEL veil.hazmat.v3.schedule.CHUNK_LABEL
    veil.hazmat.v3.schedule.ANSWER_LABEL veil.hazmat.v3.schedule.SIGNATURE_LABEL
    veil.hazmat.v3.schedule.DEFAULT_WINDOW_SECONDS veil.hazmat.kem.SEED_SIZE
    veil.hazmat.kem.MLKEM768_PUBLIC_KEY_SIZE veil.hazmat.kem.Kem.HYBRID.value
    veil.hazmat.kem.Kem.X25519.value veil.wire.envelopes.X25519_KEY_SIZE
    veil.wire.envelopes.SALT_SIZE veil.wire.envelopes.NONCE_SIZE veil.wire.envelopes.HASH_SIZE
    veil.wire.envelopes.TAG_SIZE veil.wire.envelopes.ED25519_SIGNATURE_SIZE
    veil.wire.envelopes.REQUEST_ID_SIZE veil.wire.envelopes.RESPONSE_NONCE_SIZE
    veil.wire.envelopes.MLKEM768_X25519_PUBLIC_KEY_SIZE veil.wire.envelopes.RESERVATION_HEADER
    veil.wire.envelopes.RESERVATION_ID_PATTERN veil.wire.tickets.TICKET_HEADER
    veil.wire.tickets.RECEIPT_HEADER veil.wire.tickets.RECEIPT_COMMENT veil.node.frames.DONE
    veil.node.keyring.DEFAULT_GRACE_SECONDS veil.attestation.evidence.REPORT_DATA_LABEL
    veil.attestation.evidence.REPORT_DATA_LABEL_V3 veil.attestation.evidence.GPU_NONCE_LABEL
    veil.attestation.evidence.GPU_DIGEST_LABEL veil.attestation.evidence.KEM_PUBLIC_KEY_SIZE
    veil.config.DEFAULT_KEMS
    """
)

# HPKE's registry ids, as cryptography names them; test_hpke_ids_are_what_cryptography_computes
# proves each against the IETF vectors before anything relies on it.
KEM_BY_ID = {0x647A: hpke.KEM.MLKEM768_X25519, 0x0020: hpke.KEM.X25519}
KDF_BY_ID = {0x0001: hpke.KDF.HKDF_SHA256}
AEAD_BY_ID = {0x0002: hpke.AEAD.AES_256_GCM, 0x0003: hpke.AEAD.CHACHA20_POLY1305}


# -- reading the document --------------------------------------------------------------------------


def blocks(tag: str) -> list[str]:
    """The bodies of the fenced blocks whose info string names ``tag``."""
    found = re.findall(r"^```([^\n]*)\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    return [body for info, body in found if tag in info.split()]


def assignments(tag: str) -> dict[str, Any]:
    """``name = literal`` lines of the ``tag`` blocks (a name stated twice must agree)."""
    values: dict[str, Any] = {}
    for body in blocks(tag):
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, literal = line.partition(" = ")
            assert sep, f"{tag}: not 'name = value': {line!r}"
            value = ast.literal_eval(literal.strip())
            name = name.strip()
            assert values.get(name, value) == value, f"{name} is stated twice, differently"
            values[name] = value
    return values


def tables(header: str) -> list[list[list[str]]]:
    """The rows of every table whose header row starts with ``header``, cells stripped of `."""
    lines = DOC.read_text().splitlines()
    found = []
    for start in (i for i, line in enumerate(lines) if line.startswith(header)):
        rows = []
        for line in lines[start + 2 :]:
            if not line.startswith("|"):
                break
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
        found.append(rows)
    return found


def table(header: str) -> list[list[str]]:
    """The rows of the one table whose header row starts with ``header``."""
    (rows,) = tables(header)
    return rows


def resolve(dotted: str) -> Any:
    """``veil.a.b.NAME.attr`` -> the object: the longest importable module prefix, then getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AssertionError(f"{dotted} names no module")


FACT = assignments("veil-facts")
CONST = assignments("veil-constants")


def const(name: str) -> Any:
    return CONST[f"veil.hazmat.v3.schedule.{name}"]


def canonical(fields: dict[str, Any]) -> bytes:
    """Section 0's canonical JSON, written from the document's words."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- the stated constants are the code's -----------------------------------------------------------


def test_every_stated_constant_is_the_codes() -> None:
    assert set(CONST) >= REQUIRED_CONSTANTS, REQUIRED_CONSTANTS - set(CONST)
    for name, stated in CONST.items():
        actual = resolve(name)
        assert type(actual) is type(stated) and actual == stated, (name, actual, stated)


def test_the_facts_are_the_ones_checked_here() -> None:
    assert set(FACT) == FACTS


def test_errors_table_is_the_code() -> None:
    rows = {(code, int(status), cls) for code, status, cls, _ in table("| code | status |")}
    assert rows == {(c.code, c.status, c.__name__) for c in ALL_ERRORS}


def test_routes_table_is_the_code() -> None:
    rows = {tuple(row) for row in table("| endpoint | plain route |")}
    assert rows == {(e, r.plain, r.confidential) for e, r in ROUTES.items()}


def test_lock_table_names_every_field() -> None:
    named = {
        name for first, _ in table("| field | value |") for name in re.findall(r"[a-z_]+", first)
    }
    assert named == set(NodesCreateLockResponse.model_fields)


def test_ticket_and_receipt_fields_are_the_codes() -> None:
    assert set(FACT["ticket.fields"]) == set(Ticket.model_fields)
    assert set(FACT["receipt.fields"]) == set(UsageReceipt.model_fields)
    assert set(FACT["receipt_query.fields"]) == set(ReceiptQuery.model_fields)


def test_only_the_two_suites_and_kems_parse() -> None:
    """The history note: a veil-v2 envelope does not parse (the node answers 400)."""
    assert typing.get_args(Protocol) == FACT["envelope.protocols"]
    assert typing.get_args(KemName) == FACT["envelope.kems"] == tuple(k.value for k in Kem)
    good = VECTORS[0]["request_envelope"]
    ConfidentialComputeRequest.model_validate(good)
    with pytest.raises(ValidationError):
        ConfidentialComputeRequest.model_validate({**good, "protocol": "veil-v2"})


def _sizes_hold(model: type[BaseModel], good: dict[str, Any], rows: list[list[str]]) -> None:
    assert {row[0] for row in rows} == set(model.model_fields)
    for name, kind, size, *_ in rows:
        if kind != "base64":
            continue
        exact = not size.startswith(">=")
        n = int(size.removeprefix(">=").strip())

        def with_size(length: int, field: str = name) -> dict[str, Any]:
            return {**good, field: base64.b64encode(bytes(length)).decode()}

        model.model_validate(with_size(n))
        with pytest.raises(ValidationError):
            model.model_validate(with_size(n - 1))
        if exact:
            with pytest.raises(ValidationError):
                model.model_validate(with_size(n + 1))


def test_envelope_tables_name_every_field_and_its_size() -> None:
    """Section 5: the envelope's table, then the answer's, each checked on a vector's object."""
    vector = VECTORS[0]
    request_rows, response_rows = tables("| field | JSON type | bytes | atoma-v1 | veil-v3 |")
    _sizes_hold(ConfidentialComputeRequest, vector["request_envelope"], request_rows)
    final = vector["response_chunks"][-1]["response"]
    _sizes_hold(ConfidentialComputeResponse, final, response_rows)


# -- HPKE ids, proved by the IETF vectors, and the veil-v3 request opened with them --------------


def _ietf_decrypts(vector: dict[str, Any], suite: hpke.Suite, private: Any) -> bool:
    first = vector["encryptions"][0]
    plaintext = rust_openssl.hpke._decrypt_with_aad(
        suite,
        bytes.fromhex(vector["enc"]) + bytes.fromhex(first["ct"]),
        private,
        info=bytes.fromhex(vector["info"]),
        aad=bytes.fromhex(first["aad"]),
    )
    return bool(plaintext.hex() == first["pt"])


def test_hpke_ids_are_what_cryptography_computes() -> None:
    """Each id of KEM_BY_ID / KDF_BY_ID / AEAD_BY_ID decrypts the IETF vectors of that id; the
    X25519 one through the exact suite veil-v3 uses for ``kem = "x25519"``."""
    pq = json.loads((HPKE_VECTORS / "hpke-pq-test-vectors.json").read_text())
    xwing = next(v for v in pq if v["kem_id"] == 0x647A and v["kdf_id"] == 1 and v["mode"] == 0)
    key = NodeKemKey.from_seed(Kem.HYBRID, bytes.fromhex(xwing["skRm"]))
    assert key.public_key.hex() == xwing["pkRm"]
    suite = hpke.Suite(KEM_BY_ID[0x647A], KDF_BY_ID[1], AEAD_BY_ID[xwing["aead_id"]])
    assert _ietf_decrypts(xwing, suite, key.private_key)

    rfc = json.loads((HPKE_VECTORS / "test-vectors.json").read_text())
    wanted = (FACT["hpke.mode"], 0x0020, FACT["hpke.kdf_id"], FACT["hpke.aead_id"])
    classic = next(v for v in rfc if (v["mode"], v["kem_id"], v["kdf_id"], v["aead_id"]) == wanted)
    private = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(classic["skRm"]))
    assert _ietf_decrypts(classic, SUITES[Kem.X25519], private)
    suite = hpke.Suite(KEM_BY_ID[0x0020], KDF_BY_ID[wanted[2]], AEAD_BY_ID[wanted[3]])
    assert _ietf_decrypts(classic, suite, private)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_vector_request_opens_with_the_documented_suite(vector: dict[str, Any]) -> None:
    kem = vector["kem"]
    suite = hpke.Suite(
        KEM_BY_ID[FACT[f"hpke.kem_id.{kem}"]],
        KDF_BY_ID[FACT["hpke.kdf_id"]],
        AEAD_BY_ID[FACT["hpke.aead_id"]],
    )
    key = NodeKemKey.from_seed(Kem(kem), bytes.fromhex(vector["node_key_seed"]))
    public = bytes.fromhex(vector["node_public_key"])
    assert len(public) == FACT[f"kem.public_key_size.{kem}"] == key.kem.public_key_size
    envelope = vector["request_envelope"]
    assert base64.b64decode(envelope["node_dh_public_key"]) == public[-32:]
    digest = hashlib.new(FACT["keyid.hash"].replace("-256", ""), public, digest_size=32)
    assert envelope["key_id"] == digest.digest()[: FACT["keyid.bytes"]].hex() == vector["key_id"]
    sealed = base64.b64decode(envelope["ciphertext"])
    plaintext = suite.decrypt(sealed, key.private_key, bytes.fromhex(vector["info"]))
    secret_size = const("SECRET_SIZE")
    assert plaintext[:secret_size].hex() == vector["response_secret"]
    assert plaintext[secret_size:].decode() == vector["body"]
    enc = len(sealed) - len(plaintext) - CONST["veil.wire.envelopes.TAG_SIZE"]
    assert enc == FACT[f"hpke.enc_size.{kem}"] == Kem(kem).enc_size


# -- veil-v3's info and answer, from the document alone -------------------------------------------


def info_fields() -> list[tuple[str, str]]:
    """``field = source  comment`` lines of the one ``veil-v3-info`` block."""
    (body,) = blocks("veil-v3-info")
    return re.findall(r"^(\w+) = (\S+)", body, flags=re.M)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_vector_info_is_the_documented_layout(vector: dict[str, Any]) -> None:
    info = bytes.fromhex(vector["info"])
    label = const("REQUEST_LABEL")
    assert info.startswith(label)
    document = json.loads(info[len(label) :])
    fields = info_fields()
    assert list(document) == [name for name, _ in fields] == sorted(document)
    assert canonical(document) == info[len(label) :]
    envelope = vector["request_envelope"]
    confidential = {route.confidential for route in ROUTES.values()}
    for name, source in fields:
        if source == "route":
            assert document[name] == vector["endpoint"] and document[name] in confidential
        elif source.startswith("envelope."):
            assert document[name] == envelope[source.removeprefix("envelope.")], name
        else:
            assert document[name] == ast.literal_eval(source), name
    if vector["kem"] == "x25519":  # the example printed in section 7.2
        (example,) = blocks("veil-v3-info-example")
        assert example.strip().replace("\\0", "\x00").encode() == info


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["kem"])
def test_vector_answer_recomputes_from_the_document(vector: dict[str, Any]) -> None:
    """Section 7.4 with the document's labels and sizes reproduces every byte of the answer."""
    digest = getattr(hashlib, FACT["v3.hash"])
    envelope = vector["request_envelope"]
    request_id = base64.b64decode(envelope["request_id"])
    response_nonce = bytes.fromhex(vector["response_nonce"])
    info = bytes.fromhex(vector["info"])
    okm = HKDF(
        hashes.SHA256(),
        FACT["v3.response_okm_bytes"],
        salt=response_nonce,
        info=const("RESPONSE_LABEL") + request_id,
    ).derive(bytes.fromhex(vector["response_secret"]))
    key, base_nonce = okm[: FACT["v3.response_key_bytes"]], okm[FACT["v3.response_key_bytes"] :]
    assert len(base_nonce) == CONST["veil.wire.envelopes.NONCE_SIZE"]
    running = digest(const("ANSWER_LABEL") + response_nonce + digest(info).digest()).digest()
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["node_signing_seed"]))
    chunks = vector["response_chunks"]
    for i, chunk in enumerate(chunks):
        final = i == len(chunks) - 1
        sealed = chunk["response"]
        position = i.to_bytes(FACT["v3.chunk_index_bytes"], "big")
        flag = int(final).to_bytes(FACT["v3.chunk_final_bytes"], "big")
        nonce = (int.from_bytes(base_nonce, "big") ^ i).to_bytes(len(base_nonce), "big")
        ciphertext = AESGCM(key).encrypt(
            nonce, chunk["plaintext"].encode(), const("CHUNK_LABEL") + position + flag
        )
        running = digest(running + position + flag + ciphertext).digest()
        assert base64.b64decode(sealed["nonce"]) == nonce
        assert base64.b64decode(sealed["ciphertext"]) == ciphertext
        assert base64.b64decode(sealed["response_hash"]) == running
        assert base64.b64decode(sealed["response_nonce"]) == response_nonce
        assert (sealed["index"], sealed["final"]) == (i, final)
        if final:
            assert sealed["usage"] == vector["usage"]
            message = const("SIGNATURE_LABEL") + running + canonical(sealed["usage"])
            assert base64.b64decode(sealed["signature"]) == signer.sign(message)
        else:
            assert sealed["signature"] is None and sealed["usage"] is None


# -- keys document, X-Wing seed expansion, report_data ---------------------------------------------


def test_keys_document_example_is_what_a_rotated_keyring_serves(tmp_path: Path) -> None:
    (example_text,) = blocks("keys-document")
    example = json.loads(example_text)
    keyring = Keyring(tmp_path)
    keyring.rotate()
    served = keyring.describe()
    assert set(served) == set(example)
    assert served["signature_scheme"] == example["signature_scheme"]
    assert [set(entry) for entry in served["keys"]] == [set(entry) for entry in example["keys"]]
    assert [e["status"] for e in served["keys"]] == [e["status"] for e in example["keys"]]
    current = served["keys"][0]
    assert current["kem"] == example["keys"][0]["kem"]
    assert keyring.rotated_at is not None
    grace = float(CONST["veil.node.keyring.DEFAULT_GRACE_SECONDS"])
    assert served["keys"][1]["accepted_until"] == int(keyring.rotated_at + grace)
    # The X-Wing key is its seed's expansion, as section 2 says, and its id the key id rule.
    seed = (tmp_path / "keys" / "xwing-current.seed").read_bytes()
    assert FACT["xwing.seed_expansion"] == "shake256"
    expanded = hashlib.shake_256(seed).digest(FACT["xwing.expanded_bytes"])
    cut = FACT["xwing.mlkem_seed_bytes"]
    ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:cut]).public_key().public_bytes_raw()
    xp = x25519.X25519PrivateKey.from_private_bytes(expanded[cut:]).public_key().public_bytes_raw()
    kem_public = base64.b64decode(current["kem_public_key"])
    assert kem_public == ml + xp
    assert len(ml) == CONST["veil.hazmat.kem.MLKEM768_PUBLIC_KEY_SIZE"]
    for public, name in ((kem_public, "kem_key_id"), (current["public_key"], "key_id")):
        raw = public if isinstance(public, bytes) else base64.b64decode(public)
        blake = hashlib.blake2b(raw, digest_size=32).digest()[: FACT["keyid.bytes"]].hex()
        assert current[name] == blake == key_id(raw)


def _h(name: str, *parts: bytes) -> bytes:
    return hashlib.new(name, b"".join(parts)).digest()


def test_report_data_is_the_documented_formula() -> None:
    def c(name: str) -> Any:
        return CONST[f"veil.attestation.evidence.{name}"]

    x, ed, nonce = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 20
    kem_public = bytes([4]) * c("KEM_PUBLIC_KEY_SIZE")
    report, chain = b"gpu report", b"-----BEGIN CERTIFICATE-----"
    size = [len(report).to_bytes(4, "big"), len(chain).to_bytes(4, "big")]
    gpus = _h("sha256", c("GPU_DIGEST_LABEL"), size[0], report, size[1], chain)
    assert evidence.gpu_digest([(report, chain)]) == gpus
    assert evidence.gpu_nonce(x, ed, nonce) == _h("sha256", c("GPU_NONCE_LABEL"), x, ed, nonce)
    kem_digest = _h("sha256", kem_public)
    v3 = _h("sha512", c("REPORT_DATA_LABEL_V3"), x, ed, kem_digest, gpus, nonce)
    assert evidence.report_data(x, ed, nonce, gpus, kem_public) == v3
    classical = _h("sha512", c("REPORT_DATA_LABEL"), x, ed, gpus, nonce)
    assert evidence.report_data(x, ed, nonce, gpus) == classical
    no_gpu = _h("sha256", c("GPU_DIGEST_LABEL"))
    assert evidence.report_data(x, ed, nonce) == _h(
        "sha512", c("REPORT_DATA_LABEL"), x, ed, no_gpu, nonce
    )
