"""Write tests/vectors/veil-v3.json: one request and one three-chunk streamed answer per KEM.

    python tests/vectors/make_veil_v3.py

Fixed inputs: the node's KEM seed and Ed25519 seed, the request id, timestamp, reservation, the
response secret and the response nonce. HPKE's encapsulation randomness is not an input
cryptography exposes, so the request ciphertext is recorded as produced: an implementation checks
it by opening it, and reproduces every byte of the answer (AES-GCM and Ed25519 are deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.hazmat import v3

OUT = Path(__file__).resolve().parent / "veil-v3.json"
ENDPOINT = "/v1/confidential/chat/completions"
BODY = '{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"Bonjour"}],"stream":true}'
CHUNKS = ['{"delta":"Par"}', '{"delta":"is"}', '{"delta":"."}']


def vector(kem: v3.Kem, seed_byte: int) -> dict[str, object]:
    key = v3.NodeKemKey.from_seed(kem, bytes([seed_byte]) * 32)
    signing_seed = bytes([seed_byte + 1]) * 32
    signer = Ed25519PrivateKey.from_private_bytes(signing_seed)
    secret = bytes([seed_byte + 2]) * 32
    response_nonce = bytes([seed_byte + 3]) * 32
    envelope, _ = v3.seal_request(
        key.public_key,
        key.key_id,
        BODY.encode(),
        node_signing_key=signer.public_key(),
        endpoint=ENDPOINT,
        model_name="smollm2-135m-instruct",
        stack_small_id=7,
        num_compute_units=300,
        stream=True,
        reservation_id="0123456789abcdef0123456789abcdef",
        kem=kem,
        now=1_765_000_000,
        request_id=bytes(range(16)),
        response_secret=secret,
    )
    info = v3.info_of(envelope, kem, ENDPOINT)
    server = v3.ServerSession(
        response_secret=secret,
        request_id=bytes(range(16)),
        info=info,
        key_id=key.key_id,
        expires_at=0,
        response_nonce=response_nonce,
    )
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    chunks = []
    for i, text in enumerate(CHUNKS):
        final = i == len(CHUNKS) - 1
        sealed = server.seal(
            text.encode(), final=final, sign=signer.sign, usage=usage if final else None
        )
        chunks.append({"plaintext": text, "response": sealed.model_dump(mode="json")})
    return {
        "kem": kem.value,
        "endpoint": ENDPOINT,
        "node_key_seed": key.seed.hex(),
        "node_public_key": key.public_key.hex(),
        "key_id": key.key_id,
        "node_signing_seed": signing_seed.hex(),
        "body": BODY,
        "info": info.hex(),
        "response_secret": secret.hex(),
        "response_nonce": response_nonce.hex(),
        "request_envelope": envelope.model_dump(mode="json"),
        "usage": usage,
        "response_chunks": chunks,
    }


def main() -> None:
    document = {
        "suite": "veil-v3",
        "description": (
            "Open request_envelope with the key from node_key_seed (X-Wing seed expansion for "
            "mlkem768-x25519): the plaintext is response_secret || body. Then seal "
            "response_chunks with response_secret, response_nonce and node_signing_seed: every "
            "field must match byte for byte. See docs/PROTOCOL.md."
        ),
        "vectors": [vector(v3.Kem.HYBRID, 0x11), vector(v3.Kem.X25519, 0x21)],
    }
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
