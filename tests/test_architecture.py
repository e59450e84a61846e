"""The architecture rule of DESIGN.md, checked: nothing under gateway/ can decrypt."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import veil.gateway

GATEWAY = Path(veil.gateway.__file__).parent
# Modules that hold decryption: the node's side and the v1 suite's session.
FORBIDDEN = ("veil.node", "veil.protocol.v1", "veil.client", "veil.engines")
FORBIDDEN_NAMES = {"AESGCM", "X25519PrivateKey", "HKDF", "ChaCha20Poly1305"}


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_no_gateway_module_imports_anything_that_decrypts() -> None:
    files = sorted(GATEWAY.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for module, names in imports_of(path):
            assert not module.startswith(FORBIDDEN), f"{path.name} imports {module}"
            assert not FORBIDDEN_NAMES & set(names), f"{path.name} imports {names}"


def test_importing_the_gateway_app_loads_no_decrypting_module() -> None:
    # A fresh interpreter would be purer; unloading what the gateway package pulled in is enough
    # to see its transitive imports.
    import subprocess

    code = (
        "import sys, veil.gateway.app, veil.gateway.cli;"
        "bad=[m for m in sys.modules if m.startswith(('veil.node','veil.protocol.v1','veil.engines'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert importlib.util.find_spec("veil.gateway.app") is not None
