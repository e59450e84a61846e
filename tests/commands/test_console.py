"""``veil console``: its options and errors, the bundle hash it prints, the release manifest it
checks, and a real run serving the page pointed at its gateway."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.harness import free_port, veil_process, wait_until
from veil.attestation.release_manifest import ReleaseManifest
from veil.cli import app as veil_app
from veil.console import bundle_sha256

GATEWAY = "https://gw.example:8443"


def write_manifest(path: Path, **fields: object) -> Path:
    document = {"release": "veil 0.1.0", "sev_snp": [{"measurement": "ab" * 48}], **fields}
    path.write_text(json.dumps(document))
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(veil_app, ["console", *args], env={"VEIL_BASE_URL": None})
    return result.exit_code, result.output


def test_print_hash_is_the_bundles_sha256() -> None:
    assert run("--print-hash") == (0, bundle_sha256() + "\n")


@pytest.mark.parametrize(
    "gateway",
    ["ftp://gw.example", "gw.example:8443", "https://gw.example/api", "https://u@gw.example"],
)
def test_a_gateway_that_is_not_an_origin_is_refused(gateway: str) -> None:
    code, output = run("--gateway", gateway)
    assert code == 2 and output.startswith("error: --gateway: expected"), output
    assert repr(gateway) in output


def test_bad_ports_are_refused_by_the_option() -> None:
    for port in ("0", "65536", "x"):
        code, output = run("--port", port)
        assert code == 2 and "--port" in output, output


def test_a_missing_bundle_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("veil.console.STATIC_DIR", tmp_path)
    code, output = run("--gateway", GATEWAY)
    assert code == 1 and "the web console is not installed in this package" in output
    assert "make web" in output


def test_without_fastapi_and_uvicorn_it_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    code, output = run("--gateway", GATEWAY)
    assert code == 2
    assert output == "error: `veil console` needs the console extra: pip install 'veil[console]'\n"


def test_a_manifest_with_another_bundle_is_refused(tmp_path: Path) -> None:
    other = write_manifest(tmp_path / "m.json", console_bundle_sha256="0" * 64)
    code, output = run("--gateway", GATEWAY, "--manifest", str(other))
    assert code == 1 and f"this console's bundle (sha256 {bundle_sha256()})" in output
    assert "is not the one release veil 0.1.0 lists" in output and "not serving it" in output
    silent = write_manifest(tmp_path / "s.json")
    code, output = run("--gateway", GATEWAY, "--manifest", str(silent))
    assert code == 1 and "lists no console_bundle_sha256" in output
    (tmp_path / "bad.json").write_text("{")
    code, output = run("--gateway", GATEWAY, "--manifest", str(tmp_path / "bad.json"))
    assert code == 2 and "not valid JSON" in output
    code, output = run("--gateway", GATEWAY, "--manifest", str(tmp_path / "absent.json"))
    assert code == 2 and "cannot read manifest" in output


def test_the_manifest_field_is_a_lowercase_sha256() -> None:
    base = {"release": "r", "sev_snp": [{"measurement": "ab" * 48}]}
    assert ReleaseManifest.model_validate(base).console_bundle_sha256 is None
    listed = ReleaseManifest.model_validate({**base, "console_bundle_sha256": bundle_sha256()})
    assert listed.console_bundle_matches(bundle_sha256().upper())
    assert not listed.console_bundle_matches("0" * 64)
    for bad in ("AB" * 32, "ab" * 31, f"sha256:{'ab' * 32}"):
        with pytest.raises(ValidationError):
            ReleaseManifest.model_validate({**base, "console_bundle_sha256": bad})


def test_veil_console_serves_the_page_for_its_gateway(tmp_path: Path) -> None:
    port = free_port()
    manifest = write_manifest(tmp_path / "m.json", console_bundle_sha256=bundle_sha256())
    log = tmp_path / "console.log"
    args = ["console", "--gateway", f"{GATEWAY}/v1", "--port", str(port)]
    with veil_process([*args, "--manifest", str(manifest)], log) as process:
        url = f"http://127.0.0.1:{port}/"

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(url, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, "veil console")
        index = httpx.get(url, timeout=30)
    assert f'<meta name="veil-gateway" content="{GATEWAY}" />' in index.text
    assert f"connect-src 'self' {GATEWAY};" in index.headers["content-security-policy"]
    printed = log.read_text()
    assert f"Web console bundle sha256 {bundle_sha256()}" in printed
    assert "Console bundle matches release veil 0.1.0" in printed
    assert f"Veil console for {GATEWAY} on http://127.0.0.1:{port}/" in printed
    assert f"veil gateway --console-origin http://127.0.0.1:{port}\n" in printed


def test_release_verify_shows_the_console_bundle_it_lists(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.json", console_bundle_sha256=bundle_sha256())
    key = tmp_path / "release.key"
    runner = CliRunner()
    public = runner.invoke(veil_app, ["release", "keygen", "--out", str(key)]).output.strip()
    signature = tmp_path / "m.sig.json"
    signed = runner.invoke(
        veil_app, ["release", "sign", str(manifest), "--key", str(key), "--out", str(signature)]
    )
    assert signed.exit_code == 0, signed.output
    verify = ["release", "verify", str(manifest), "--signature", str(signature)]
    verified = runner.invoke(veil_app, [*verify, "--trusted-key", public])
    assert verified.exit_code == 0, verified.output
    assert f"  console bundle sha256 {bundle_sha256()}\n" in verified.output
