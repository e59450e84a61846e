"""``veil node --kem``: the KEMs a node accepts for veil-v3, from the command line; a KEM the node
does not know is one clear error line before anything loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from veil.commands.common import node_settings


def test_kem_flags_become_the_node_kems() -> None:
    assert node_settings(kems=["mlkem768-x25519", "x25519"]).kems == ["mlkem768-x25519", "x25519"]
    assert node_settings(kems=None).kems == ["mlkem768-x25519"]  # the default: post-quantum only


def test_an_unknown_kem_is_refused_with_one_error_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veil.cli", "node", "--kem", "kyber512", "--data-dir", str(tmp_path),
         "--insecure-no-gateway"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error: invalid settings") and "kems" in line, line
    assert not list(tmp_path.iterdir())  # refused before any key or model was made
