"""A stand-in for the kernel's side of configfs-tsm, for the provider tests.

There is no TEE on the test machine. ``ConfigfsStandIn`` is a temporary directory whose attribute
files it creates on mkdir, and which reacts to a write of ``inblob`` the way the kernel does (bump
``generation``, produce ``outblob``). Its "report" is just a labelled copy of the inblob, not a
quote.
"""

from __future__ import annotations

from pathlib import Path

ATTRIBUTES = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel_floor")


class ConfigfsStandIn:
    """Plays the kernel's part of configfs-tsm on a plain directory (no TEE here)."""

    def __init__(self, root: Path, provider: str = "tdx_guest", racing_writes: int = 0) -> None:
        self.root = root
        self.provider = provider
        self.racing_writes = racing_writes  # extra inblob writes by "another process"
        self.inblobs: list[bytes] = []
        self.entries: list[str] = []
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def report_for(inblob: bytes) -> bytes:
        return b"STAND-IN REPORT, NO TEE:" + inblob

    def created(self, entry: Path) -> None:
        self.entries.append(entry.name)
        for name in ATTRIBUTES:
            (entry / name).write_bytes(b"")
        (entry / "provider").write_text(f"{self.provider}\n")
        (entry / "generation").write_text("0\n")

    def written(self, entry: Path, attribute: str) -> None:
        generation = int((entry / "generation").read_text()) + 1 + self.racing_writes
        (entry / "generation").write_text(f"{generation}\n")
        if attribute == "inblob":
            inblob = (entry / "inblob").read_bytes()
            self.inblobs.append(inblob)
            (entry / "outblob").write_bytes(self.report_for(inblob))

    def removing(self, entry: Path) -> None:
        for child in entry.iterdir():
            child.unlink()
