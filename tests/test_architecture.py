"""The architecture rule of DESIGN.md, checked: nothing under gateway/ can decrypt.

The decrypting code lives in ``veil.hazmat`` (the suites), the node, the client and the engines;
the gateway may import ``veil.wire`` (what travels), never those.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import veil.gateway

GATEWAY = Path(veil.gateway.__file__).parent
# Packages that hold decryption or plaintext: the suites, the node's side, the client, engines.
FORBIDDEN = ("veil.hazmat", "veil.node", "veil.client", "veil.engines")
FORBIDDEN_NAMES = {"AESGCM", "X25519PrivateKey", "HKDF", "ChaCha20Poly1305", "hpke", "mlkem"}
#: Modules whose import alone means decrypting: HPKE (veil-v3) and ML-KEM.
DECRYPTING_MODULES = (
    "cryptography.hazmat.primitives.hpke",
    "cryptography.hazmat.primitives.asymmetric.mlkem",
    "pyhpke",
)


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
            assert not module.startswith(DECRYPTING_MODULES), f"{path.name} imports {module}"


def test_importing_the_gateway_app_loads_no_decrypting_module() -> None:
    # In a fresh interpreter: every module the gateway pulls in, transitively.
    import subprocess

    code = (
        "import sys, veil.gateway.app, veil.gateway.cli;"
        f"bad=[m for m in sys.modules if m.startswith({FORBIDDEN!r})];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert importlib.util.find_spec("veil.gateway.app") is not None


def test_every_module_that_can_decrypt_lives_behind_the_fence() -> None:
    """Decrypting primitives appear only in packages the gateway may not import, so a suite
    added to ``veil.wire`` (or anywhere the gateway reaches) fails here."""
    source = GATEWAY.parent
    decrypting = FORBIDDEN_NAMES | {"Suite", "KEM", "MLKEM768PrivateKey"}
    offenders = []
    for path in sorted(source.rglob("*.py")):
        module = "veil." + ".".join(path.relative_to(source).with_suffix("").parts)
        imports = imports_of(path)
        uses = any(
            decrypting & set(names) or name.startswith(DECRYPTING_MODULES)
            for name, names in imports
        )
        if uses and not module.startswith(FORBIDDEN):
            offenders.append(module)
    assert offenders == []
    assert {"veil.hazmat.v1", "veil.hazmat.v3.client", "veil.hazmat.v3.node"} <= {
        "veil." + ".".join(p.relative_to(source).with_suffix("").parts)
        for p in (source / "hazmat").rglob("*.py")
    }
