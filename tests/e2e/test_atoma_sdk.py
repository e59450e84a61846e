"""The published atoma-sdk 0.1.3 client, unmodified, against a Veil gateway and real models."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.atoma_venv import ensure_atoma_python
from tests.e2e.conftest import CHAT, EMBED, Deployment


@pytest.fixture(scope="session")
def atoma_python() -> Path:
    """atoma-sdk in its own venv (it pins pydantic<2.11); built once, then reused."""
    return ensure_atoma_python()


def test_atoma_sdk_works_unmodified(deployment: Deployment, atoma_python: Path) -> None:
    key, stacks = deployment.new_user("atoma-user", {CHAT: 100_000, EMBED: 10_000})
    result = subprocess.run(
        [
            str(atoma_python),
            str(Path(__file__).with_name("atoma_client.py")),
            deployment.url,
            key,
            CHAT,
            EMBED,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(out["chat"]["content"], str)
    assert out["chat"]["usage"]["completion_tokens"] >= 1
    assert len(out["stream"]) >= 1 and "".join(out["stream"]).strip()
    assert out["embedding_dims"] == 384
    assert out["embedding_usage"] > 0
    chat_stack = deployment.stack(stacks[CHAT])
    assert chat_stack["reserved_units"] == 0
    assert chat_stack["used_units"] >= out["chat"]["usage"]["total_tokens"]
    assert deployment.stack(stacks[EMBED])["used_units"] == out["embedding_usage"]
