"""Intel TDX and AMD SEV-SNP evidence through the kernel's configfs-tsm interface (Linux 6.7+,
``Documentation/ABI/testing/configfs-tsm-report``).

One report is one directory under ``/sys/kernel/config/tsm/report``: ``mkdir`` it, write
``inblob``, read ``outblob`` (the quote / attestation report), ``provider`` says which TEE
answered, and ``generation`` counts writes so a racing writer is noticed; ``rmdir`` it afterwards.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from veil.attestation.evidence import AttestationError, EvidenceFormat
from veil.attestation.providers_base import ProviderUnavailable, check_report_data, log

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
TSM_PROVIDERS: dict[str, EvidenceFormat] = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}


class TsmRaceError(AttestationError):
    """Another writer touched our configfs-tsm entry between our write and our read."""


class TsmKernel(Protocol):
    """What the kernel does on configfs-tsm operations, for running without one.

    Production passes nothing: the real configfs does all of this itself. Tests pass a stand-in
    that creates the attribute files on ``mkdir``, reacts to writes (bump ``generation``, produce
    ``outblob``) and removes the files before ``rmdir``. There is no TEE in such a test.
    """

    def created(self, entry: Path) -> None: ...

    def written(self, entry: Path, attribute: str) -> None: ...

    def removing(self, entry: Path) -> None: ...


class ConfigfsTsmProvider:
    """TDX or SEV-SNP evidence through configfs-tsm."""

    def __init__(
        self,
        format: EvidenceFormat,
        root: Path = TSM_REPORT_ROOT,
        *,
        kernel: TsmKernel | None = None,
    ) -> None:
        if format not in TSM_PROVIDERS.values():
            raise ValueError(f"configfs-tsm gives tdx or sev-snp evidence, not {format!r}")
        self.name: str = format
        self.format: EvidenceFormat = format
        self.root = Path(root)
        self._kernel = kernel

    # -- one report entry -----------------------------------------------------------------
    def _create_entry(self) -> Path:
        if not self.root.is_dir():
            raise ProviderUnavailable(f"configfs-tsm is not available: {self.root} does not exist")
        entry = self.root / f"veil-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            entry.mkdir(mode=0o700)
        except OSError as exc:
            raise ProviderUnavailable(
                f"cannot create a report entry under {self.root}: {exc.strerror or exc}"
            ) from None
        if self._kernel is not None:
            self._kernel.created(entry)
        return entry

    def _remove_entry(self, entry: Path) -> None:
        if self._kernel is not None:
            self._kernel.removing(entry)
        try:
            entry.rmdir()
        except OSError as exc:  # leaves a stale entry behind, but the evidence itself is fine
            log.warning("could not remove configfs-tsm entry %s: %s", entry.name, exc.strerror)

    def _write(self, entry: Path, attribute: str, data: bytes) -> None:
        # configfs gathers a binary attribute's writes and hands the blob to the driver on close,
        # so generation moves once the file is closed.
        fd = os.open(entry / attribute, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise AttestationError(f"short write to configfs-tsm {attribute}")
        finally:
            os.close(fd)
        if self._kernel is not None:
            self._kernel.written(entry, attribute)

    @staticmethod
    def _generation(entry: Path) -> int:
        return int((entry / "generation").read_text().strip())

    @staticmethod
    def _provider(entry: Path) -> str:
        return (entry / "provider").read_text().strip()

    # -- the interface ---------------------------------------------------------------------
    def probe(self) -> EvidenceFormat | None:
        """Which TEE configfs-tsm reports here; None where the interface does not exist.

        Where it exists but cannot be used (no permission, a TEE Veil does not know), this raises
        instead: a confidential machine must never quietly fall back to "no TEE".
        """
        if not self.root.is_dir():
            return None
        entry = self._create_entry()
        try:
            provider = self._provider(entry)
        except OSError as exc:
            raise ProviderUnavailable(
                f"cannot read the configfs-tsm provider: {exc.strerror or exc}"
            ) from None
        finally:
            self._remove_entry(entry)
        found = TSM_PROVIDERS.get(provider)
        if found is None:
            raise ProviderUnavailable(
                f"configfs-tsm provider {provider!r} is not one Veil supports"
            )
        return found

    def get_evidence(self, report_data: bytes) -> bytes:
        inblob = check_report_data(report_data)
        entry = self._create_entry()
        try:
            return self._report(entry, inblob)
        except OSError as exc:  # e.g. EIO when the TEE firmware refuses to produce a report
            raise AttestationError(
                f"configfs-tsm did not produce a report: {exc.strerror or exc}"
            ) from None
        finally:
            self._remove_entry(entry)

    def _report(self, entry: Path, inblob: bytes) -> bytes:
        provider = self._provider(entry)
        if TSM_PROVIDERS.get(provider) != self.format:
            raise ProviderUnavailable(
                f"configfs-tsm is served by {provider!r}, not a {self.format} guest"
            )
        expected = self._generation(entry) + 1  # the kernel counts our one write
        self._write(entry, "inblob", inblob)
        if self._generation(entry) != expected:
            raise TsmRaceError("configfs-tsm entry was written by someone else before reading")
        outblob = (entry / "outblob").read_bytes()
        if self._generation(entry) != expected:
            raise TsmRaceError("configfs-tsm entry was written by someone else while reading")
        if not outblob:
            raise AttestationError(f"{provider} returned an empty report")
        return outblob
