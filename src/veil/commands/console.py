"""``veil console``: the web console from the installed package, on this machine, against a gateway
elsewhere. A page that a gateway serves is whatever that gateway sends; this one is the bundle you
installed, whose SHA-256 is printed at start (and, with ``--manifest``, checked against a release).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from veil.commands.common import err, fail
from veil.config import CLIENT_BASE_URL
from veil.extras import needs_extras

__all__ = ["console"]


def console(
    gateway: Annotated[
        str,
        typer.Option(
            "--gateway",
            envvar="VEIL_BASE_URL",
            help="The gateway the page talks to; it must allow this "
            "console's origin (veil gateway --console-origin).",
        ),
    ] = CLIENT_BASE_URL,
    host: Annotated[str, typer.Option(help="Interface to serve the console on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to serve the console on.", min=1, max=65535)
    ] = 8090,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="A release manifest (verify its signature with `veil release verify`): serve only "
            "if its console_bundle_sha256 is this bundle's.",
        ),
    ] = None,
    print_hash: Annotated[
        bool,
        typer.Option(
            "--print-hash", help="Print the bundle's SHA-256 (for a release manifest) and exit."
        ),
    ] = False,
) -> None:
    """Serve the web console from the installed package against a gateway elsewhere."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise needs_extras("console", ("console",))
    from veil.console import bundle_sha256
    from veil.console.serve import bundle_line, console_installed, gateway_origin, local_origin

    if not console_installed():
        raise fail(
            "the web console is not installed in this package (its static bundle is missing): "
            "reinstall veil, or in a source tree build it with `make web`"
        )
    if print_hash:
        typer.echo(bundle_sha256())
        return
    try:
        target = gateway_origin(gateway)
    except ValueError as exc:
        raise fail(f"{exc} (given {gateway!r})", 2) from None
    if manifest is not None:
        _check_manifest(manifest, bundle_sha256())
    origin = local_origin(host, port)
    err.print(bundle_line(), highlight=False)
    err.print(f"Veil console for {target} on {origin}/", highlight=False)
    err.print(
        "The gateway must allow this origin (CORS); its operator runs it with\n"
        f"  veil gateway --console-origin {origin}\n"
        f"or sets VEIL_CONSOLE_ORIGINS={origin}",
        markup=False,
        highlight=False,
    )
    from veil.console.serve import run_console

    run_console(target, host=host, port=port)


def _check_manifest(path: Path, sha256: str) -> None:
    from veil.attestation.release_manifest import ReleaseManifestError, parse_manifest

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read manifest {path}: {exc.strerror or exc}", 2) from None
    try:
        release = parse_manifest(raw)
    except ReleaseManifestError as exc:
        raise fail(f"{path}: {exc.reason}", 2) from None
    if release.console_bundle_sha256 is None:
        raise fail(f"release {release.release} ({path}) lists no console_bundle_sha256")
    if not release.console_bundle_matches(sha256):
        raise fail(
            f"this console's bundle (sha256 {sha256}) is not the one release {release.release} "
            f"lists ({release.console_bundle_sha256}): not serving it"
        )
    err.print(
        f"Console bundle matches release {release.release} ({path}); its signature is checked "
        "by `veil release verify`, not here.",
        highlight=False,
    )
