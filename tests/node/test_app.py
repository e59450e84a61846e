"""The node app moves bytes: plaintext (opened bodies, model answers) never passes through it.

Checked on the source: which node modules can see plaintext is a fact of their imports, so a
route that starts decrypting or parsing OpenAI bodies in ``app.py`` fails here.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi.responses import StreamingResponse

import veil.node
from veil.node.app import SSE_HEADERS, respond
from veil.node.pipeline import StreamAnswer, WholeAnswer
from veil.wire.tickets import RECEIPT_HEADER

NODE = Path(veil.node.__file__).parent
# The pipeline and the modules it drives (its docstring lists them): where plaintext lives.
PIPELINE = {"pipeline", "sealing", "frames", "streams", "receipts", "service", "bodies"}
# Importing one of these is handling plaintext: the suites, the OpenAI bodies, the engines.
PLAINTEXT = ("veil.hazmat", "veil.wire.openai", "veil.engines")


def imports_of(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return found


def test_only_pipeline_modules_handle_plaintext() -> None:
    handling = {
        path.stem
        for path in NODE.glob("*.py")
        if any(module.startswith(PLAINTEXT) for module in imports_of(path))
    }
    # boot builds the engines from settings (it never sees a request); the keyring holds node keys
    # (veil.hazmat.kem: X-Wing and X25519 key pairs), and nothing of any suite that opens or seals.
    assert handling - {"boot", "keyring"} <= PIPELINE
    keyring_imports = imports_of(NODE / "keyring.py")
    assert [m for m in keyring_imports if m.startswith(PLAINTEXT)] == ["veil.hazmat.kem"]
    assert keyring_imports["veil.hazmat.kem"] <= {"Kem", "NodeKemKey", "SEED_SIZE"}
    assert {"sealing", "service", "bodies"} <= handling  # the guard looks where it should


def test_the_app_takes_only_bytes_in_and_out_of_the_pipeline() -> None:
    imports = imports_of(NODE / "app.py")
    assert not [m for m in imports if m.startswith(PLAINTEXT)]
    node_modules = {m.removeprefix("veil.node.") for m in imports if m.startswith("veil.node.")}
    assert not node_modules & (PIPELINE - {"pipeline", "service"})
    assert imports["veil.node.pipeline"] <= {"Answer", "Pipeline", "StreamAnswer", "WholeAnswer"}
    assert imports["veil.node.service"] == {"EngineRegistry"}  # the type, not the engine calls


def test_a_whole_answer_is_sent_as_it_is_with_its_receipt() -> None:
    response = respond(WholeAnswer(b'{"sealed":true}', "receipt-token"))
    assert response.body == b'{"sealed":true}'
    assert response.headers[RECEIPT_HEADER] == "receipt-token"
    assert response.media_type == "application/json"


def test_a_stream_answer_is_sent_event_by_event() -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        yield b"data: two\n\n"

    response = respond(StreamAnswer(events()))
    assert isinstance(response, StreamingResponse)
    assert response.media_type == "text/event-stream"
    for name, value in SSE_HEADERS.items():
        assert response.headers[name] == value

    async def drain() -> list[bytes | str | memoryview]:
        return [chunk async for chunk in response.body_iterator]

    assert asyncio.run(drain()) == [b"data: one\n\n", b"data: two\n\n"]
