"""Reading the web console's receipts download (``veil.client.usage_file``): the rows and stacks
as saved, the page's attested keys as untrusted hints, and a clear error for anything else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from veil.client import usage_file
from veil.client.usage_file import ReceiptsFileError, read_receipts_file

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER = base64.b64encode(bytes(32)).decode()


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "receipts.json"
    path.write_text(json.dumps(document))
    return path


def page_node(key: str = KEY, **fields: object) -> dict[str, object]:
    return {
        "node_small_id": 3,
        "node_signing_key": key,
        "format": "tdx",
        "insecure": False,
    } | fields


def test_rows_stacks_and_page_nodes_are_read(tmp_path: Path) -> None:
    rows = [{"id": 1, "receipt": "a.b"}, {"id": 2, "receipt": "c.d"}]
    stacks = [{"stack_small_id": 7, "used_units": 9}]
    nodes = [page_node(), page_node(OTHER, format="none", insecure=True)]
    saved = read_receipts_file(
        write(tmp_path, {"user": "u", "usage": rows, "stacks": stacks, "attested_nodes": nodes})
    )
    assert (saved.user, saved.rows, saved.stacks) == ("u", rows, stacks)
    tdx, none = saved.page_nodes[bytes(range(32))], saved.page_nodes[bytes(32)]
    assert tdx.tee_attested and tdx.attestation_formats == ("tdx",) and tdx.node_small_id == 3
    assert not none.tee_attested


@pytest.mark.parametrize(
    "node",
    [
        page_node(insecure=True),  # accepted on the no-TEE acknowledgement
        {k: v for k, v in page_node().items() if k != "insecure"},  # unsaid: fail closed
        page_node(format=None),
    ],
)
def test_a_key_the_page_did_not_say_was_tee_attested_counts_as_none(
    tmp_path: Path, node: dict[str, object]
) -> None:
    document = {"usage": [], "stacks": [], "attested_nodes": [node]}
    (saved,) = read_receipts_file(write(tmp_path, document)).page_nodes.values()
    assert saved.attestation_formats == ("none",)


def test_a_key_seen_with_a_tee_and_without_keeps_the_tee(tmp_path: Path) -> None:
    nodes = [page_node(format="none", insecure=True), page_node()]
    document = {"usage": [], "stacks": [], "attested_nodes": nodes}
    (saved,) = read_receipts_file(write(tmp_path, document)).page_nodes.values()
    assert saved.tee_attested


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([1, 2], "is not a receipts file"),
        ({"stacks": []}, "is not a receipts file"),
        ({"usage": {}, "stacks": []}, "'usage' must be a list of objects"),
        ({"usage": [], "stacks": [1]}, "'stacks' must be a list of objects"),
        ({"usage": []}, "'stacks' must be a list of objects"),
        (
            {"usage": [], "stacks": [], "attested_nodes": [page_node("AAAA")]},
            "attested_nodes entry is malformed",
        ),
        (
            {"usage": [], "stacks": [], "attested_nodes": [page_node(node_small_id=True)]},
            "attested_nodes entry is malformed",
        ),
    ],
)
def test_malformed_files_get_a_clear_error(tmp_path: Path, document: object, message: str) -> None:
    with pytest.raises(ReceiptsFileError, match=message):
        read_receipts_file(write(tmp_path, document))


def test_not_json_missing_and_oversized_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "receipts.json"
    with pytest.raises(ReceiptsFileError, match="cannot read"):
        read_receipts_file(path)
    path.write_bytes(b"\xff not json")
    with pytest.raises(ReceiptsFileError, match="is not JSON"):
        read_receipts_file(path)
    monkeypatch.setattr(usage_file, "MAX_RECEIPTS_FILE_BYTES", 64)
    path.write_text(json.dumps({"usage": [], "stacks": [], "pad": "x" * 64}))
    with pytest.raises(ReceiptsFileError, match="is over 64 bytes"):
        read_receipts_file(path)
