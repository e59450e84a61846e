"""A data directory that cannot be written (below a file, on a read-only filesystem, on a full
disk) stops `veil node`, `veil gateway` and `veil serve` with one `error:` line and a non-zero
exit, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_MODEL_DIR
from tests.faults.conftest import VEIL, unavailable
from tests.servers import free_port


def _mount_tmpfs(target: Path, options: str) -> None:
    """Mount a tmpfs, or skip this case saying why (needs root and CAP_SYS_ADMIN)."""
    mount = shutil.which("mount")
    if mount is None or os.geteuid() != 0:
        unavailable("cannot mount a tmpfs here (needs root and mount)")
    target.mkdir()
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs here ({result.stderr.strip()})")


def _fill(directory: Path) -> None:
    """Write until the filesystem says it is full."""
    try:
        with (directory / "filler").open("wb", buffering=0) as out:
            while True:
                out.write(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc


@pytest.fixture(params=["below-a-file", "read-only-fs", "full-disk"])
def unusable_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A data directory path that cannot be used, for the reason in the parameter."""
    if request.param == "below-a-file":  # unwritable even for root: its parent is a file
        (tmp_path / "a-file").write_text("")
        yield tmp_path / "a-file" / "data"
        return
    mounted = tmp_path / "mnt"
    if request.param == "read-only-fs":
        _mount_tmpfs(mounted, "size=1m,ro")
    else:
        _mount_tmpfs(mounted, "size=64k")
    try:
        if request.param == "full-disk":
            _fill(mounted)
        yield mounted / "data"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["umount", "-l", str(mounted)], timeout=30, check=False)


def test_unusable_data_dir_is_one_error_line(unusable_dir: Path) -> None:
    data = str(unusable_dir)
    commands = {
        "node": ["node", "--data-dir", data, "--port", str(free_port())],
        "gateway": ["gateway", "--node", "http://127.0.0.1:9", "--data-dir", data],
        "serve": ["serve", "--data-dir", data, "--port", str(free_port())],
    }
    env = {**os.environ, "VEIL_MODELS_DIR": str(TEST_MODEL_DIR)}
    # The three at once: each only imports and checks its directory before it gives up.
    running = {
        name: subprocess.Popen(
            [*VEIL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for name, args in commands.items()
    }
    results = {}
    for name, proc in running.items():
        try:
            results[name] = (*proc.communicate(timeout=120), proc.returncode)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=15)
    for name, (stdout, stderr, code) in results.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code != 0, f"veil {name} exited 0 with an unusable data dir"
        assert "Traceback" not in stderr + stdout, f"veil {name}:\n{stderr}"
        assert len(lines) == 1 and lines[0].startswith("error:"), f"veil {name}:\n{stderr}"
        assert data in lines[0], f"veil {name} does not name the directory: {lines[0]}"


def test_gateway_without_room_for_its_ledger_is_one_error_line(tmp_path: Path) -> None:
    """Room for the key and the directory check, not for the SQLite ledger: the ledger is opened
    before serving, so this too is one line rather than a traceback from the server's startup."""
    mounted = tmp_path / "mnt"
    _mount_tmpfs(mounted, "size=64k")
    try:
        (mounted / "filler").write_bytes(b"\0" * 40_000)  # leaves 6 pages of 16
        result = subprocess.run(
            [*VEIL, "gateway", "--node", "http://127.0.0.1:9", "--data-dir", str(mounted / "d")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run(["umount", "-l", str(mounted)], timeout=30, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "ledger" in lines[0], lines[0]
