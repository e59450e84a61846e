"""The receipts file the web console downloads, read for ``veil usage --verify --file FILE``.

The console's Usage page saves ``{"user", "usage": [rows of GET /v1/usage], "stacks": [rows of
GET /v1/stacks], "attested_nodes": [...]}``. The rows and stacks are what the gateway said, and
``verify_usage`` checks them exactly as it checks a live read: nothing in them is trusted.

``attested_nodes`` is different: it is the page's own record of the node signing keys whose
evidence it verified. It is only as trustworthy as the page that wrote it, and a page served by
the gateway is the gateway's code. So those keys count only when the caller says so
(``--trust-page-nodes``: the file came from a console they trust, e.g. ``veil console``);
otherwise receipts verify against this client's own known nodes alone.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from veil.client.known_nodes import KnownNode

__all__ = ["MAX_RECEIPTS_FILE_BYTES", "ReceiptsFile", "ReceiptsFileError", "read_receipts_file"]

MAX_RECEIPTS_FILE_BYTES: Final = 64 * 1024 * 1024
PAGE_GATEWAY: Final = "web console"  # the KnownNode.gateway of a key the page attested


class ReceiptsFileError(Exception):
    """The file is missing, too large, or not what the console downloads."""


@dataclass(frozen=True)
class ReceiptsFile:
    user: str | None
    rows: list[dict[str, Any]]
    stacks: list[dict[str, Any]]
    page_nodes: dict[bytes, KnownNode]  # what the page says it attested (not trusted by default)


def _objects(document: dict[str, Any], field: str, *, required: bool) -> list[dict[str, Any]]:
    items = document.get(field)
    if items is None and not required:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ReceiptsFileError(f"the receipts file's {field!r} must be a list of objects")
    return items


def _page_node(item: dict[str, Any]) -> KnownNode:
    try:
        key = base64.b64decode(str(item["node_signing_key"]), validate=True)
        node_id = item.get("node_small_id")
        if len(key) != 32 or not isinstance(node_id, int) or isinstance(node_id, bool):
            raise ValueError("bad key or node id")
    except (KeyError, ValueError, binascii.Error):
        raise ReceiptsFileError(
            "an attested_nodes entry is malformed (expected a 32-byte base64 node_signing_key "
            "and an integer node_small_id)"
        ) from None
    # A key the page accepted only with the no-TEE acknowledgement counts as "none" evidence.
    insecure = item.get("insecure") is not False or item.get("format") in (None, "none")
    fmt = "none" if insecure else str(item["format"])
    return KnownNode(key, node_id, PAGE_GATEWAY, (fmt,), 0.0, 0.0)


def read_receipts_file(path: Path) -> ReceiptsFile:
    """The file's rows, stacks and the page's attested keys; a clear error for anything else."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECEIPTS_FILE_BYTES + 1)
    except OSError as exc:
        raise ReceiptsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECEIPTS_FILE_BYTES:
        raise ReceiptsFileError(
            f"{path} is over {MAX_RECEIPTS_FILE_BYTES} bytes: not a receipts file"
        )
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ReceiptsFileError(f"{path} is not JSON") from None
    if not isinstance(document, dict) or "usage" not in document:
        raise ReceiptsFileError(
            f"{path} is not a receipts file (the console's Usage page downloads one: an object "
            "with 'usage' and 'stacks')"
        )
    user = document.get("user")
    nodes = [_page_node(i) for i in _objects(document, "attested_nodes", required=False)]
    page_nodes: dict[bytes, KnownNode] = {}
    for node in nodes:
        seen = page_nodes.get(node.signing_public_key)
        if seen is None or (seen.attestation_formats == ("none",) and node.tee_attested):
            page_nodes[node.signing_public_key] = node
    return ReceiptsFile(
        user=user if isinstance(user, str) else None,
        rows=_objects(document, "usage", required=True),
        stacks=_objects(document, "stacks", required=True),
        page_nodes=page_nodes,
    )
