"""The atoma-sdk side of the crypto benchmarks; runs INSIDE atoma-sdk 0.1.3's own virtual
environment (``tests/atoma_venv.py``), so it imports nothing of Veil.

It reads one JSON command per line on stdin and answers one JSON line on stdout, so the caller can
interleave its own rounds with this process's rounds (machine drift then hits both sides alike).
Binary values travel as standard base64. Commands:

``{"op": "setup", "node_sk", "request", "answer"}``
    the node's X25519 private key and the request and answer plaintexts (the caller's own bytes).
``{"op": "request", "iterations": N}``
    N full request paths with atoma-sdk's functions; answers ``{"steps": [us, us, us, us]}``:
    client seal, node open, node seal, client open (microseconds per operation).
``{"op": "load_chunks", "client_sk", "node_pk", "salt", "chunks": [{ciphertext, nonce, response_hash}]}``
    a sealed stream made by the caller, kept as atoma-sdk's ``ConfidentialComputeResponse`` models
    (what its SSE parser hands to ``decrypt_message``).
``{"op": "chunks", "repeats": R}``
    opens every loaded chunk with ``crypto_utils.decrypt_message``, R times; answers
    ``{"us_per_chunk": best}``.

What each step is, in atoma-sdk terms: the client seal is ``crypto_utils.encrypt_message`` minus
its lock call (an HTTP request to the proxy, not crypto): a fresh X25519 key as the SDK makes one
per request, ``exchange``, ``derive_key``, ``AESGCM.encrypt``, ``calculate_hash``, base64 and its
``ConfidentialComputeRequest`` model. The node open is ``decrypt_message``'s own steps (exchange,
``derive_key``, AES-GCM, ``calculate_hash`` check) keeping the key, and the node seal reuses it
with a fresh nonce, as Atoma's node does (the SDK has no node side; these are its functions). The
client open is ``decrypt_message`` itself, as the SDK calls it on every answer.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from typing import Any

from atoma_sdk import crypto_utils
from atoma_sdk.models.confidentialcomputerequest import ConfidentialComputeRequest
from atoma_sdk.models.confidentialcomputeresponse import ConfidentialComputeResponse
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


class Worker:
    def __init__(self) -> None:
        self.node_sk: X25519PrivateKey | None = None
        self.request = b""
        self.answer = b""
        self.chunks: list[ConfidentialComputeResponse] = []
        self.chunk_keys: tuple[X25519PrivateKey, X25519PublicKey, bytes] | None = None

    def setup(self, command: dict[str, Any]) -> dict[str, Any]:
        self.node_sk = X25519PrivateKey.from_private_bytes(unb64(command["node_sk"]))
        self.request = unb64(command["request"])
        self.answer = unb64(command["answer"])
        return {"ok": True}

    def request_path(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.node_sk is not None, "setup first"
        node_sk = self.node_sk
        node_pk = node_sk.public_key()
        spent = [0, 0, 0, 0]
        for _ in range(int(command["iterations"])):
            t0 = time.perf_counter_ns()
            # client seal: encrypt_message without its lock request
            client_sk = X25519PrivateKey.generate()
            client_pk = client_sk.public_key()
            salt = secrets.token_bytes(crypto_utils.SALT_SIZE)
            key = crypto_utils.derive_key(client_sk.exchange(node_pk), salt)
            nonce = secrets.token_bytes(crypto_utils.NONCE_SIZE)
            ciphertext = AESGCM(key).encrypt(nonce, self.request, None)
            envelope = ConfidentialComputeRequest(
                ciphertext=b64(ciphertext),
                client_dh_public_key=b64(client_pk.public_bytes_raw()),
                model_name="smollm2-135m-instruct",
                node_dh_public_key=b64(node_pk.public_bytes_raw()),
                nonce=b64(nonce),
                plaintext_body_hash=b64(crypto_utils.calculate_hash(self.request)),
                salt=b64(salt),
                stack_small_id=1,
                num_compute_units=256,
                stream=False,
            )
            t1 = time.perf_counter_ns()
            # node open: decrypt_message's own steps, keeping the key for the answer as a node
            # does (decrypt_message itself would throw it away)
            client_public = X25519PublicKey.from_public_bytes(unb64(envelope.client_dh_public_key))
            node_key = crypto_utils.derive_key(
                node_sk.exchange(client_public), unb64(envelope.salt)
            )
            node_cipher = AESGCM(node_key)
            opened = node_cipher.decrypt(unb64(envelope.nonce), unb64(envelope.ciphertext), None)
            if not secrets.compare_digest(
                crypto_utils.calculate_hash(opened), unb64(envelope.plaintext_body_hash)
            ):
                raise RuntimeError("request hash mismatch")
            t2 = time.perf_counter_ns()
            # node seal: same key, fresh nonce, BLAKE2b of the answer (what Atoma's node does)
            answer_nonce = secrets.token_bytes(crypto_utils.NONCE_SIZE)
            sealed = ConfidentialComputeResponse(
                ciphertext=b64(node_cipher.encrypt(answer_nonce, self.answer, None)),
                nonce=b64(answer_nonce),
                response_hash=b64(crypto_utils.calculate_hash(self.answer)),
            )
            t3 = time.perf_counter_ns()
            # client open
            answer = crypto_utils.decrypt_message(client_sk, node_pk, salt, sealed)
            t4 = time.perf_counter_ns()
            if opened != self.request or answer != self.answer:
                raise RuntimeError("atoma-sdk round trip did not reproduce the plaintexts")
            for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
                spent[i] += b - a
        n = int(command["iterations"])
        return {"steps": [ns / n / 1000 for ns in spent]}

    def load_chunks(self, command: dict[str, Any]) -> dict[str, Any]:
        self.chunk_keys = (
            X25519PrivateKey.from_private_bytes(unb64(command["client_sk"])),
            X25519PublicKey.from_public_bytes(unb64(command["node_pk"])),
            unb64(command["salt"]),
        )
        self.chunks = [ConfidentialComputeResponse(**chunk) for chunk in command["chunks"]]
        return {"ok": True, "chunks": len(self.chunks)}

    def open_chunks(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.chunk_keys is not None, "load_chunks first"
        client_sk, node_pk, salt = self.chunk_keys
        best = float("inf")
        total = 0
        for _ in range(int(command["repeats"])):
            t0 = time.perf_counter_ns()
            for chunk in self.chunks:
                total += len(crypto_utils.decrypt_message(client_sk, node_pk, salt, chunk))
            best = min(best, (time.perf_counter_ns() - t0) / len(self.chunks) / 1000)
        return {"us_per_chunk": best, "bytes": total}


def main() -> int:
    worker = Worker()
    handlers = {
        "setup": worker.setup,
        "request": worker.request_path,
        "load_chunks": worker.load_chunks,
        "chunks": worker.open_chunks,
    }
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = handlers[command["op"]](command)
        except Exception as exc:  # reported to the caller, which stops the benchmark
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
