"""``veil attest``: check a node's attestation from the command line.

    veil attest verify --quote FILE [--collateral FILE|DIR] [--event-log FILE] [...]
    veil attest verify --snp-report FILE [--vcek FILE --cert-chain FILE] [...]
    veil attest verify --gpu-report FILE --gpu-cert-chain FILE [--rim FILE ...] [--ocsp FILE ...]
    veil attest verify --bundle FILE | --evidence FILE      (what GET /v1/attestation returns)
    veil attest verify --url NODE_URL                        (live, with a fresh nonce)
        common: [--at ISO-8601-TIME] [--policy FILE] [--pccs-url URL] [--kds-url URL]
                [--expect-keys NODE_URL [--nonce B64]] [--json]
    veil attest pin NODE_URL --out policy.toml               (trust on first use)

Exit status: 0 when every step that applies passed, 1 when a check failed, 2 when an input could
not be read.

The commands live in ``cli_verify`` and ``cli_pin``; what they read, in ``cli_inputs``.
"""

from __future__ import annotations

import typer

from veil.attestation.cli_inputs import EXIT_BAD_INPUT, EXIT_FAILED, InputError, fetch_node_keys
from veil.attestation.cli_pin import pin, pins_from_report
from veil.attestation.cli_pin import policy_toml as _toml  # noqa: F401  (its name before the split)
from veil.attestation.cli_verify import verify

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "InputError",
    "attest_app",
    "fetch_node_keys",
    "pins_from_report",
]

attest_app = typer.Typer(
    help="Verify TEE attestation evidence: Intel TDX, AMD SEV-SNP, NVIDIA GPUs, releases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@attest_app.callback()
def attest() -> None:
    """Verify a node's attestation: signatures, collateral, measurements, GPUs, key binding."""


attest_app.command("verify")(verify)
attest_app.command("pin")(pin)

if __name__ == "__main__":
    attest_app()
