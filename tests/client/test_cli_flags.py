"""The user CLI's policy flags: ``--allow-classical-kem`` reaches the client's policy (and only
when given), on top of a ``--policy`` file, whose other settings it keeps."""

from __future__ import annotations

from pathlib import Path

from veil.client.cli import WireProtocol, _client


def test_allow_classical_kem_sets_the_policy_and_keeps_the_file(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n')
    with _client("http://127.0.0.1:9", "k", False, WireProtocol.v3, policy_file) as strict:
        assert strict.policy.allow_classical_kem is False
    with _client(
        "http://127.0.0.1:9", "k", False, WireProtocol.v3, policy_file, False, True
    ) as allowing:
        assert allowing.policy.allow_classical_kem is True
        assert allowing.policy.allowed_tcb_statuses == (
            "UpToDate",
            "SWHardeningNeeded",
        )  # the file's setting kept
    with _client("http://127.0.0.1:9", "k", allow_classical_kem=True) as default:
        assert default.policy.allow_classical_kem is True
        assert default.policy.allow_no_tee is False  # nothing else loosened
