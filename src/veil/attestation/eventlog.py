"""Runtime measurement of dstack-style TDX nodes: replay the RTMR event log against the quote.

Why: a TD's RTMRs are hash chains, not values anyone can read meaning from. A node that measures
its runtime into RTMR3 (dstack: the app compose file, app id, instance id, key provider, OS
image) publishes the event log that built them. A client replays it; if every RTMR of the signed
quote comes out exactly, each event is what the TD measured, and the client can pin the
*application* (the compose hash) instead of a raw RTMR3 that changes with every instance id.

The log is JSON, a list of events ``{"imr", "event_type", "digest", "event", "event_payload"}``
(``digest`` and ``event_payload`` in hex; ``imr`` is the zero-based RTMR index). Replay::

    RTMR[i] = 48 zero bytes;  for each event e:  RTMR[e.imr] = SHA-384(RTMR[e.imr] || e.digest)

Replay alone proves the digests, not the payloads next to them: a payload could be swapped while
its digest is kept. dstack's runtime events (type 0x08000001, in RTMR3) define their digest from
their content, so for those the digest is recomputed::

    digest = SHA-384(event_type as u32 little-endian || ":" || event name || ":" || payload)

and only values of events that pass both checks are handed out. Boot events (RTMR0..2) measure
firmware objects the log does not carry, so their payloads are informative only and are never
read as values. dstack sets the TD's MRCONFIGID to ``0x01 || compose_hash`` (zero padded to 48
bytes), and the compose hash is SHA-256 of the app-compose document.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veil.attestation.abi_tdx import MEASUREMENT_SIZE, TdxQuote
from veil.attestation.evidence import AttestationError
from veil.attestation.report_steps import VerificationReport

RTMR_COUNT = 4
DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
RUNTIME_IMR = 3
COMPOSE_HASH_SIZE = 32
MAX_EVENTS = 4096
MAX_PAYLOAD = 1 << 20
MR_CONFIG_ID_COMPOSE_TAG = b"\x01"

# Runtime event names whose payloads are returned by runtime_values, and how they are decoded.
_BYTES_VALUES = ("compose-hash", "app-id", "instance-id", "os-image-hash")
_TEXT_VALUES = ("key-provider",)

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

__all__ = [
    "DSTACK_RUNTIME_EVENT_TYPE",
    "Event",
    "EventLogError",
    "app_compose_hash",
    "check_event_log",
    "dstack_mr_config_id",
    "parse_event_log",
    "replay_event_log",
    "runtime_event_digest",
    "runtime_values",
]


class EventLogError(AttestationError, ValueError):
    """An event log that is not well formed, or whose runtime events do not match their digests."""


@dataclass(frozen=True)
class Event:
    """One event: the RTMR it extends (0..3), its TCG / dstack type, the 48-byte digest extended,
    and for runtime events the name and payload the digest is computed from."""

    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes

    @property
    def is_runtime(self) -> bool:
        return self.event_type == DSTACK_RUNTIME_EVENT_TYPE

    def expected_digest(self) -> bytes:
        return runtime_event_digest(self.event_type, self.name, self.payload)


EventLogInput = str | bytes | Sequence[Mapping[str, Any] | Event]


# -- formulas ------------------------------------------------------------------------------------
def runtime_event_digest(event_type: int, name: str, payload: bytes) -> bytes:
    """dstack's digest of a runtime event: SHA-384(type u32 LE || ":" || name || ":" || payload)."""
    return hashlib.sha384(
        event_type.to_bytes(4, "little") + b":" + name.encode() + b":" + payload
    ).digest()


def app_compose_hash(app_compose: str | bytes) -> bytes:
    """The compose hash dstack measures: SHA-256 of the exact app-compose document bytes."""
    data = app_compose.encode() if isinstance(app_compose, str) else app_compose
    return hashlib.sha256(data).digest()


def dstack_mr_config_id(compose_hash: bytes) -> bytes:
    """The MRCONFIGID dstack gives a TD: 0x01 || compose_hash, zero padded to 48 bytes."""
    if len(compose_hash) != COMPOSE_HASH_SIZE:
        raise EventLogError(
            f"compose hash must be {COMPOSE_HASH_SIZE} bytes, got {len(compose_hash)}"
        )
    return (MR_CONFIG_ID_COMPOSE_TAG + compose_hash).ljust(MEASUREMENT_SIZE, b"\x00")


# -- parsing -------------------------------------------------------------------------------------
def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise EventLogError(f"{what} must be a hex string, got {type(value).__name__}")
    return bytes.fromhex(value)


def _event(index: int, entry: Mapping[str, Any] | Event) -> Event:
    if isinstance(entry, Event):
        entry = {
            "imr": entry.imr,
            "event_type": entry.event_type,
            "digest": entry.digest.hex(),
            "event": entry.name,
            "event_payload": entry.payload.hex(),
        }
    if not isinstance(entry, Mapping):
        raise EventLogError(f"event {index} must be a JSON object, got {type(entry).__name__}")
    imr = entry.get("imr")
    if not isinstance(imr, int) or isinstance(imr, bool) or not 0 <= imr < RTMR_COUNT:
        raise EventLogError(f"event {index}: imr must be an integer 0..3, got {imr!r}")
    event_type = entry.get("event_type")
    if not isinstance(event_type, int) or isinstance(event_type, bool):
        raise EventLogError(f"event {index}: event_type must be an integer, got {event_type!r}")
    if not 0 <= event_type < 1 << 32:
        raise EventLogError(f"event {index}: event_type {event_type} is not a u32")
    digest = _hex(entry.get("digest"), f"event {index}: digest")
    if len(digest) != MEASUREMENT_SIZE:
        raise EventLogError(
            f"event {index}: digest must be {MEASUREMENT_SIZE} bytes (SHA-384), got {len(digest)}"
        )
    name = entry.get("event", "")
    if not isinstance(name, str):
        raise EventLogError(f"event {index}: event name must be a string")
    payload_hex = entry.get("event_payload", "")
    if isinstance(payload_hex, str) and len(payload_hex) > 2 * MAX_PAYLOAD:
        raise EventLogError(f"event {index}: payload is larger than {MAX_PAYLOAD} bytes")
    payload = _hex(payload_hex, f"event {index}: event_payload")
    return Event(imr=imr, event_type=event_type, digest=digest, name=name, payload=payload)


def parse_event_log(events: EventLogInput) -> list[Event]:
    """The events of a dstack event log: JSON text / bytes, or an already decoded list."""
    if isinstance(events, str | bytes):
        try:
            decoded = json.loads(events)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventLogError(f"event log is not JSON ({exc.__class__.__name__})") from None
    else:
        decoded = events
    if not isinstance(decoded, Sequence) or isinstance(decoded, str | bytes):
        raise EventLogError(f"event log must be a JSON list, got {type(decoded).__name__}")
    if len(decoded) > MAX_EVENTS:
        raise EventLogError(f"event log has {len(decoded)} events, more than {MAX_EVENTS}")
    return [_event(index, entry) for index, entry in enumerate(decoded)]


def _events(events: EventLogInput) -> list[Event]:
    return parse_event_log(events)  # Event objects too are checked again: sizes, imr range


# -- replay and values ---------------------------------------------------------------------------
def replay_event_log(events: EventLogInput) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the log builds them: each starts at 48 zero bytes, each event extends one."""
    rtmrs = [bytes(MEASUREMENT_SIZE)] * RTMR_COUNT
    for event in _events(events):
        rtmrs[event.imr] = hashlib.sha384(rtmrs[event.imr] + event.digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def _runtime_digest_problems(events: list[Event]) -> list[str]:
    problems = []
    for index, event in enumerate(events):
        if not event.is_runtime:
            continue
        expected = event.expected_digest()
        if not hmac.compare_digest(event.digest, expected):
            problems.append(
                f"RTMR{event.imr} event {index} {event.name!r}: digest {event.digest.hex()} is "
                f"not SHA-384(type || ':' || name || ':' || payload) = {expected.hex()}"
            )
    return problems


def runtime_values(events: EventLogInput) -> dict[str, bytes | str]:
    """The named values dstack measured into RTMR3 (compose-hash, app-id, instance-id,
    os-image-hash as bytes; key-provider as text), each from an event whose digest matches it.

    Raises EventLogError if any runtime event's digest does not match its payload, or if a
    value appears twice (which one the TD meant would be ambiguous). This proves nothing about
    the quote by itself: only ``check_event_log`` ties the log to the quote's RTMRs.
    """
    parsed = _events(events)
    problems = _runtime_digest_problems(parsed)
    if problems:
        raise EventLogError(problems[0])
    values: dict[str, bytes | str] = {}
    for index, event in enumerate(parsed):
        if not event.is_runtime or event.imr != RUNTIME_IMR:
            continue
        if event.name not in _BYTES_VALUES and event.name not in _TEXT_VALUES:
            continue
        if event.name in values:
            raise EventLogError(f"event {index}: {event.name!r} appears more than once")
        if event.name in _TEXT_VALUES:
            try:
                values[event.name] = event.payload.decode()
            except UnicodeDecodeError:
                raise EventLogError(f"event {index}: {event.name!r} is not UTF-8 text") from None
        else:
            values[event.name] = event.payload
    compose = values.get("compose-hash")
    if isinstance(compose, bytes) and len(compose) != COMPOSE_HASH_SIZE:
        raise EventLogError(f"compose-hash must be {COMPOSE_HASH_SIZE} bytes, got {len(compose)}")
    return values


# -- the report steps ----------------------------------------------------------------------------
def check_event_log(
    report: VerificationReport,
    quote: TdxQuote,
    events: EventLogInput,
    *,
    pinned_compose_hashes: Sequence[bytes],
) -> dict[str, bytes | str] | None:
    """Two steps: "event log" and "app compose hash". Returns the runtime values if the log
    verified against ``quote`` (whose own signature the caller must have verified), else None.

    1. parse the log (sizes: digest 48 bytes, imr 0..3)
    2. replay it; all four RTMRs must equal the quote's, compared in constant time
    3. every runtime event's digest must equal dstack's digest of its name and payload
    4. the compose-hash event's value must be one of ``pinned_compose_hashes``
    5. a non-zero MRCONFIGID must be 0x01 || compose_hash (zero padded)
    """
    compose_step = "app compose hash"
    try:
        parsed = parse_event_log(events)  # 1
    except EventLogError as exc:
        report.add("event log", False, f"malformed event log: {exc}")
        report.add(compose_step, False, "cannot check: the event log did not verify")
        return None

    replayed = replay_event_log(parsed)  # 2
    wrong = [i for i in range(RTMR_COUNT) if not hmac.compare_digest(replayed[i], quote.rtmrs[i])]
    if wrong:
        report.add(
            "event log",
            False,
            "; ".join(
                f"RTMR{i} replays to {replayed[i].hex()}, the quote has {quote.rtmrs[i].hex()}"
                for i in wrong
            ),
            expected="; ".join(f"rtmr{i}={quote.rtmrs[i].hex()}" for i in wrong),
            actual="; ".join(f"rtmr{i}={replayed[i].hex()}" for i in wrong),
        )
        report.add(compose_step, False, "cannot check: the event log did not verify")
        return None

    problems = _runtime_digest_problems(parsed)  # 3
    if problems:
        report.add("event log", False, "; ".join(problems))
        report.add(compose_step, False, "cannot check: the event log did not verify")
        return None
    try:
        values = runtime_values(parsed)
    except EventLogError as exc:
        report.add("event log", False, str(exc))
        report.add(compose_step, False, "cannot check: the event log did not verify")
        return None
    runtime = sum(1 for e in parsed if e.is_runtime)
    report.add(
        "event log",
        True,
        f"{len(parsed)} events replay RTMR0..3 of the quote exactly; the digests of "
        f"{runtime} runtime events match their names and payloads",
    )
    for name, value in values.items():
        report.facts[name.replace("-", "_")] = value.hex() if isinstance(value, bytes) else value

    compose = values.get("compose-hash")  # 4
    if not isinstance(compose, bytes):
        report.add(compose_step, False, "the event log has no compose-hash event to pin")
        return values
    seen = compose.hex()
    if not pinned_compose_hashes:
        report.add(
            compose_step,
            False,
            f"no app compose hash is pinned: pin app_compose_hash = {seen}",
            actual=seen,
        )
        return values
    matched = False
    for pin in pinned_compose_hashes:
        matched |= hmac.compare_digest(compose, pin)
    pins = ", ".join(pin.hex() for pin in pinned_compose_hashes)
    if not matched:
        report.add(
            compose_step,
            False,
            f"compose hash {seen} is not pinned (pinned: {pins})",
            expected=pins,
            actual=seen,
        )
        return values

    if any(quote.mr_config_id):  # 5
        expected = dstack_mr_config_id(compose)
        if not hmac.compare_digest(quote.mr_config_id, expected):
            report.add(
                compose_step,
                False,
                f"mr_config_id is {quote.mr_config_id.hex()}, not 0x01 || compose_hash "
                f"= {expected.hex()}",
                expected=expected.hex(),
                actual=quote.mr_config_id.hex(),
            )
            return values
        tail = "; mr_config_id = 0x01 || compose_hash"
    else:
        tail = "; mr_config_id is zero (not set by this deployment)"
    report.add(compose_step, True, f"compose hash {seen} is pinned{tail}")
    return values
