"""Writing and reading secret files: created 0600 from the first byte, replaced atomically."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

SECRET_MODE = 0o600


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so it is never readable by others, even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, path)


def read_secret(path: Path, size: int) -> bytes:
    """Read a secret of exactly ``size`` bytes; tighten permissions left too open."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, SECRET_MODE)
    data = path.read_bytes()
    if len(data) != size:
        raise ValueError(f"{path.name} holds {len(data)} bytes, expected {size}")
    return data
