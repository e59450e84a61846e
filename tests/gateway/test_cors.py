"""CORS for consoles served elsewhere, on a real gateway app over loopback: the operator's exact
origins get preflights answered and their answers readable; any other origin, and every origin
when none is configured (the default), gets no CORS headers at all."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.gateway.served import serve_gateway
from veil.cli import app as veil_app
from veil.config import GatewaySettings, load_settings
from veil.gateway.cors import parse_origin

ALLOWED = "http://127.0.0.1:8090"
OTHER = "http://127.0.0.1:8091"


def preflight(url: str, path: str, origin: str, method: str = "POST") -> httpx.Response:
    headers = {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": "authorization,content-type,x-veil-reservation",
    }
    return httpx.options(f"{url}{path}", headers=headers, timeout=30)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_an_allowed_origin_gets_its_preflights_and_answers(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, console_origins=[f"{ALLOWED}/"]) as gw:
        key, _ = gw.new_user("cors")
        for path, method in (("/v1/nodes/lock", "POST"), ("/v1/stacks", "GET"),
                             ("/admin/users/cors/limits", "PATCH")):  # fmt: skip
            answer = preflight(gw.url, path, ALLOWED, method)
            assert answer.status_code == 204, (path, answer.text)
            assert cors_headers(answer) == {
                "access-control-allow-origin": ALLOWED,
                "access-control-allow-methods": "GET, POST, PATCH",
                "access-control-allow-headers": "authorization, content-type, x-veil-reservation",
                "access-control-max-age": "600",
            }
            assert answer.headers["vary"] == "Origin"
        stacks = gw.call("GET", "/v1/stacks", key, headers={"origin": ALLOWED})
        assert stacks.status_code == 200
        assert cors_headers(stacks) == {
            "access-control-allow-origin": ALLOWED,
            "access-control-expose-headers": "retry-after",
        }
        assert stacks.headers["vary"] == "Origin"
        # An error is readable too: the page shows what went wrong, not a network failure.
        refused = gw.call("GET", "/v1/stacks", "veil_not-a-key", headers={"origin": ALLOWED})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == ALLOWED
        # Never credentials: the page sends its key as the bearer header only.
        assert "access-control-allow-credentials" not in stacks.headers


def test_any_other_origin_gets_no_cors_headers(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, console_origins=[ALLOWED]) as gw:
        key, _ = gw.new_user("cors")
        for origin in (OTHER, "http://localhost:8090", "https://127.0.0.1:8090", "null"):
            answer = preflight(gw.url, "/v1/nodes/lock", origin)
            assert answer.status_code == 404 and cors_headers(answer) == {}, origin
            stacks = gw.call("GET", "/v1/stacks", key, headers={"origin": origin})
            assert stacks.status_code == 200 and cors_headers(stacks) == {}, origin
            assert stacks.headers["vary"] == "Origin"  # a cache must not serve it to ALLOWED
        # Outside the API (the page itself, health, metrics): no CORS, even for ALLOWED.
        for path in ("/", "/health", "/metrics"):
            assert cors_headers(gw.call("GET", path, headers={"origin": ALLOWED})) == {}, path


def test_by_default_no_origin_is_allowed(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        key, _ = gw.new_user("cors")
        assert preflight(gw.url, "/v1/nodes/lock", ALLOWED).status_code == 404
        stacks = gw.call("GET", "/v1/stacks", key, headers={"origin": ALLOWED})
        assert stacks.status_code == 200 and cors_headers(stacks) == {}
        assert "vary" not in stacks.headers


def test_origins_are_normalised_as_browsers_send_them() -> None:
    assert parse_origin(" HTTPS://Console.Example:443/ ") == "https://console.example"
    assert parse_origin("http://127.0.0.1:80") == "http://127.0.0.1"
    assert parse_origin("http://[::1]:8090") == "http://[::1]:8090"
    assert parse_origin("https://console.example:8443") == "https://console.example:8443"


@pytest.mark.parametrize(
    ("value", "says"),
    [("*", "a wildcard is not allowed"), ("https://*.example", "a wildcard is not allowed"),
     ("console.example", "expected http(s)://host[:port]"), ("ftp://x", "expected http(s)"),
     ("https://console.example/app", "no path"), ("https://u@console.example", "no path"),
     ("https://console.example/?q", "no path"), ("http://x:99999", "is not a URL")],
)  # fmt: skip
def test_a_bad_origin_is_refused_naming_it(value: str, says: str) -> None:
    with pytest.raises(ValueError, match="console origin") as refused:
        parse_origin(value)
    assert says in str(refused.value)


def test_the_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in (f"{ALLOWED}, {OTHER}/", f'["{OTHER}", "{ALLOWED}"]'):
        monkeypatch.setenv("VEIL_CONSOLE_ORIGINS", raw)
        assert load_settings(GatewaySettings).console_origins == [ALLOWED, OTHER]
    monkeypatch.setenv("VEIL_CONSOLE_ORIGINS", "")
    assert load_settings(GatewaySettings).console_origins == []


def test_veil_gateway_refuses_a_wildcard_before_starting(tmp_path: Path) -> None:
    args = ["gateway", "--data-dir", str(tmp_path), "--console-origin", ALLOWED]
    result = CliRunner().invoke(veil_app, [*args, "--console-origin", "*"])
    assert result.exit_code == 2, result.output
    assert "console_origins" in result.output and "a wildcard is not allowed" in result.output
    assert not (tmp_path / "ledger.db").exists()  # refused before anything was opened
