"""A STAND-IN for Intel's PCS and AMD's KDS, which cannot be reached from here.

A real HTTP server on 127.0.0.1 (``http.server`` in a thread) that answers at the paths the real
services use, with the replies recorded from them on 2026-06-29 (``../shared/attestation-samples``):
the TCB info and QE identity JSON bodies byte for byte, the PCK and root CA CRLs in DER, the issuer
chains URL-encoded in the reply headers as Intel sends them, and AMD's VCEK and ASK/ARK chain for
Tinfoil's Genoa chip. It stands in for the services only; every byte it serves is genuine.

``requests`` records each path asked for (to see what the fetcher's cache saved); ``fail`` maps a
path (without query) to an HTTP status to answer instead.
"""

from __future__ import annotations

import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, quote, urlsplit

from tests.attestation import SAMPLES

PCS_REPLIES = SAMPLES / "tdx" / "collateral_20260629"
SNP = SAMPLES / "sev-snp"
GENOA_REPORT = SNP / "teep_tinfoil_genoa_report.bin"
GENOA_VCEK = SNP / "teep_genoa_vcek.der"


def genoa_chip_and_tcb() -> tuple[bytes, dict[str, int]]:
    """CHIP_ID (0x1A0, 64 bytes) and REPORTED_TCB (0x180, 8 bytes) of the recorded Genoa report.

    Read straight from the report's layout, so the stand-in does not lean on the parser under test.
    """
    raw = GENOA_REPORT.read_bytes()
    (tcb,) = struct.unpack_from("<Q", raw, 0x180)
    b = tcb.to_bytes(8, "little")
    return raw[0x1A0 : 0x1A0 + 64], {
        "blSPL": b[0],
        "teeSPL": b[1],
        "snpSPL": b[6],
        "ucodeSPL": b[7],
    }


def _chain_header(name: str) -> str:
    return quote((PCS_REPLIES / name).read_text(), safe="")


class PcsKdsStandIn:
    """Serve the recorded PCS / PCCS / KDS replies on a free loopback port (a context manager)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.fail: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for p in self.requests if urlsplit(p).path == path)

    def __enter__(self) -> PcsKdsStandIn:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def route(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a request target, as the real service would answer."""
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        if path in self.fail:
            return self.fail[path], {"Content-Type": "text/plain"}, b"stand-in failure\n"
        if path == "/tdx/certification/v4/tcb":
            fmspc = query.get("fmspc", [""])[0].lower()
            reply = PCS_REPLIES / f"tcb_info_{fmspc}.json"
            if not fmspc.isalnum() or not reply.is_file():
                return 404, {}, b""
            headers = {"TCB-Info-Issuer-Chain": _chain_header("tcb_info_issuer_chain.pem")}
            return 200, {"Content-Type": "application/json", **headers}, reply.read_bytes()
        if path == "/tdx/certification/v4/qe/identity":
            headers = {
                "Content-Type": "application/json",
                "SGX-Enclave-Identity-Issuer-Chain": _chain_header("qe_identity_issuer_chain.pem"),
            }
            return 200, headers, (PCS_REPLIES / "qe_identity.json").read_bytes()
        if path == "/sgx/certification/v4/pckcrl":
            if query.get("ca") != ["platform"] or query.get("encoding") != ["der"]:
                return 400, {}, b""
            headers = {
                "Content-Type": "application/pkix-crl",
                "SGX-PCK-CRL-Issuer-Chain": _chain_header("pck_crl_issuer_chain.pem"),
            }
            return 200, headers, (PCS_REPLIES / "pck_crl_platform.der").read_bytes()
        if path in ("/sgx/certification/v4/rootcacrl", "/IntelSGXRootCA.der"):
            crl = (PCS_REPLIES / "IntelSGXRootCA_crl.der").read_bytes()
            return 200, {"Content-Type": "application/pkix-crl"}, crl
        return self._kds(path, query)

    def _kds(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        segments = path.strip("/").split("/")
        if len(segments) != 4 or segments[:2] != ["vcek", "v1"]:
            return 404, {}, b""
        product, leaf = segments[2], segments[3]
        if leaf == "cert_chain":
            chain = SNP / f"ask_ark_{product.lower()}.pem"
            if product not in ("Milan", "Genoa", "Turin") or not chain.is_file():
                return 404, {}, b""
            return 200, {"Content-Type": "application/x-pem-file"}, chain.read_bytes()
        chip_id, tcb = genoa_chip_and_tcb()
        asked = {k: v[0] for k, v in query.items()}
        if (
            product != "Genoa"
            or leaf != chip_id.hex()
            or asked != {k: str(v) for k, v in tcb.items()}
        ):
            return 404, {}, b""
        return 200, {"Content-Type": "application/x-x509-ca-cert"}, GENOA_VCEK.read_bytes()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with standin._lock:
                    standin.requests.append(self.path)
                status, headers, body = standin.route(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler


__all__ = ["GENOA_REPORT", "GENOA_VCEK", "PCS_REPLIES", "PcsKdsStandIn", "genoa_chip_and_tcb"]
