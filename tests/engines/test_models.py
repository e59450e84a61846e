"""Preparing the embedded models from their PyPI packages."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_MODEL_DIR
from veil.engines import EmbeddedModelPaths, ModelPreparationError, prepare_embedded_models

pytestmark = pytest.mark.slow  # real models or server processes


def test_prepared_models_are_reused_without_copying(embedded_models: EmbeddedModelPaths) -> None:
    gguf_written = embedded_models.chat_gguf.stat().st_mtime_ns
    weights = embedded_models.embeddings_dir / "model.safetensors"
    weights_written = weights.stat().st_mtime_ns

    started = time.monotonic()
    again = prepare_embedded_models(TEST_MODEL_DIR, progress=True)

    assert again == embedded_models
    assert time.monotonic() - started < 2  # copying 340 MB would not be
    assert embedded_models.chat_gguf.stat().st_mtime_ns == gguf_written
    assert weights.stat().st_mtime_ns == weights_written


def test_first_run_prepares_and_a_damaged_copy_is_redone(tmp_path: Path) -> None:
    paths = prepare_embedded_models(tmp_path, progress=True)
    assert paths.chat_gguf.parent == tmp_path
    assert paths.chat_gguf.read_bytes()[:4] == b"GGUF"
    assert (paths.embeddings_dir / "modules.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no staging left

    with paths.chat_gguf.open("r+b") as gguf:
        gguf.truncate(1024)
    tokenizer = paths.embeddings_dir / "tokenizer.json"
    tokenizer.write_text("{}")

    repaired = prepare_embedded_models(tmp_path, progress=False)
    marker = json.loads((tmp_path / f"{paths.chat_gguf.name}.veil.json").read_text())
    assert repaired.chat_gguf.stat().st_size == marker["size"]
    assert json.loads(tokenizer.read_text())["model"]["type"] == "WordPiece"
    shutil.rmtree(tmp_path)  # 340 MB that pytest would otherwise keep for three runs


def test_an_unwritable_models_dir_is_one_readable_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ModelPreparationError) as failure:
        prepare_embedded_models(not_a_dir / "models", progress=False)
    message = str(failure.value)
    assert "cannot write models to" in message and "\n" not in message
