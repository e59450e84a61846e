"""The real atoma-sdk 0.1.3 as a baseline, driven from Veil's environment.

atoma-sdk pins pydantic<2.11, so it lives in a virtual environment of its own
(``tests/atoma_venv.py`` builds it once under ``.cache/atoma-sdk-venv``). :class:`AtomaBaseline`
starts ``benchmarks/atoma_worker.py`` with that environment's interpreter and talks to it one JSON
line at a time, so a benchmark can alternate its own rounds with atoma-sdk's rounds on the same
inputs. If the environment cannot be built (no package index), :func:`start` says why instead.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

from veil.hazmat import v1

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("atoma_worker.py")


def veil_decrypt(session: v1.Session, message: dict[str, Any]) -> bytes:
    """Veil's counterpart of atoma-sdk's ``decrypt_message`` for one sealed message, with the same
    checks (AES-GCM tag, BLAKE2b-256 ``response_hash``): the key was derived once, before."""
    plaintext = session.open(
        base64.b64decode(message["nonce"]), base64.b64decode(message["ciphertext"])
    )
    if not secrets.compare_digest(
        v1.body_hash(plaintext), base64.b64decode(message["response_hash"])
    ):
        raise ValueError("response_hash mismatch")
    return plaintext


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AtomaBaseline:
    def __init__(self, python: Path) -> None:
        self.process = subprocess.Popen(
            [str(python), str(WORKER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the atoma-sdk worker exited (status {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"atoma-sdk worker: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> AtomaBaseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start() -> tuple[AtomaBaseline | None, str]:
    """The worker, or None and the reason it could not start."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.atoma_venv import ensure_atoma_python

    try:
        python = ensure_atoma_python(quiet=False)
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"atoma-sdk 0.1.3 could not be installed in its own venv ({exc})"
    return AtomaBaseline(python), "atoma-sdk 0.1.3 (its own venv)"
