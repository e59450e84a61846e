"""GPU steps 8-9: recorded OCSP replies for the device chain and the RIM signing chains.

Replies are matched to certificates by their CertID. NVIDIA's OCSP responders do not know the
device leaf (the GPU derives it at every boot), so the device chain's OCSP covers the certificates
between leaf and root; a RIM chain's covers all but the root.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from cryptography import x509

from veil.attestation.gpu_check import GpuCheck
from veil.attestation.pki_nvidia import (
    OcspError,
    OcspReply,
    check_ocsp,
    label,
    load_ocsp_reply,
    matches,
    stamp,
)
from veil.attestation.rim import Rim

__all__ = ["load_replies", "ocsp_step", "rim_chain_pairs"]


def load_replies(
    ocsp_replies: Mapping[str, bytes | str] | Sequence[bytes | str],
) -> tuple[list[OcspReply], list[str]]:
    items = (
        list(ocsp_replies.items())
        if isinstance(ocsp_replies, Mapping)
        else [(f"reply {i + 1}", data) for i, data in enumerate(ocsp_replies)]
    )
    replies, problems = [], []
    for name, data in items:
        try:
            replies.append(load_ocsp_reply(str(name), data))
        except OcspError as exc:
            problems.append(str(exc))
    return replies, problems


def ocsp_step(
    name: str,
    what: str,
    pairs: list[tuple[x509.Certificate, x509.Certificate]],
    replies: list[OcspReply],
    used: set[int],
    at: datetime,
    max_age: timedelta,
    extra_problems: list[str],
) -> GpuCheck:
    covered, missing, problems = [], [], list(extra_problems)
    for cert, issuer in pairs:
        mine = [i for i, reply in enumerate(replies) if matches(reply, cert, issuer)]
        if not mine:
            missing.append(label(cert))
            continue
        used.update(mine)
        for i in mine:
            try:
                check_ocsp(replies[i], cert, issuer, at, max_age)
            except OcspError as exc:
                problems.append(str(exc))
        covered.append(label(cert))
    if not covered and not problems:
        return GpuCheck(name, None, f"no OCSP replies for the {what}: revocation not checked")
    if missing:
        problems.append(f"no OCSP reply for {', '.join(missing)}")
    if problems:
        return GpuCheck(name, False, "; ".join(problems))
    return GpuCheck(name, True, f"GOOD at {stamp(at)} for {', '.join(covered)}")


def rim_chain_pairs(rims: list[Rim]) -> list[tuple[x509.Certificate, x509.Certificate]]:
    pairs, seen = [], set()
    for rim in rims:
        for cert, issuer in itertools.pairwise(rim.chain):
            key = (cert.serial_number, cert.issuer.public_bytes())
            if key not in seen:
                seen.add(key)
                pairs.append((cert, issuer))
    return pairs
