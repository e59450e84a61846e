"""The published atoma-sdk 0.1.3 in a virtual environment of its own (it pins pydantic<2.11, which
Veil's own environment must not be held to). Built once under ``.cache/atoma-sdk-venv`` (or
``VEIL_ATOMA_VENV``), then reused by the end-to-end test and by the benchmarks that compare against
atoma-sdk's own crypto."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATOMA_VENV = Path(os.environ.get("VEIL_ATOMA_VENV", ROOT / ".cache" / "atoma-sdk-venv"))
ATOMA_SDK = "atoma-sdk==0.1.3"


def ensure_atoma_python(*, quiet: bool = True) -> Path:
    """The interpreter of a venv holding atoma-sdk 0.1.3, creating it if it is missing or broken."""
    python = ATOMA_VENV / "bin" / "python"
    probe = [
        str(python),
        "-c",
        "import atoma_sdk, importlib.metadata as m; assert m.version('atoma-sdk') == '0.1.3'",
    ]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not quiet:
        print(f"building {ATOMA_VENV} with {ATOMA_SDK} (once)...", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(ATOMA_VENV)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", ATOMA_SDK],
        check=True,
    )
    return python
