"""The dstack RTMR event log of a real NEAR AI CVM, replayed against its real TDX quote.

The sample (tdx/neardirect_dstack_*) is genuine: the log's 30 events rebuild all four RTMRs of
the quote exactly, its 10 runtime events carry digests that dstack's formula reproduces, and the
compose hash in RTMR3 is SHA-256 of the app-compose document and sits in MRCONFIGID.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

import pytest

from tests.attestation import SAMPLES
from veil.attestation.abi_tdx import TdxQuote, parse_tdx_quote
from veil.attestation.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    EventLogError,
    app_compose_hash,
    check_event_log,
    dstack_mr_config_id,
    parse_event_log,
    replay_event_log,
    runtime_event_digest,
    runtime_values,
)
from veil.attestation.report_steps import VerificationReport

TDX = SAMPLES / "tdx"
EVENT_LOG = TDX / "neardirect_dstack_event_log.json"
QUOTE = TDX / "neardirect_dstack_tdx_quote.bin"
INFO = TDX / "neardirect_dstack_info.json"

COMPOSE_HASH = bytes.fromhex("66007399f064f058af68771c552bcae150c9f88622305631b5141da1aa2f7b7e")


def raw_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(EVENT_LOG.read_text())
    return events


def quote() -> TdxQuote:
    return parse_tdx_quote(QUOTE.read_bytes())


def info() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(INFO.read_text())
    return document


def index_of(events: list[dict[str, Any]], name: str) -> int:
    return next(i for i, e in enumerate(events) if e["event"] == name)


def check(events: Any, pins: list[bytes], parsed: TdxQuote | None = None) -> VerificationReport:
    report = VerificationReport(subject="dstack TDX quote")
    check_event_log(report, parsed or quote(), events, pinned_compose_hashes=pins)
    return report


def flip_hex(value: str, at: int = 0) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[at] ^= 0x01
    return raw.hex()


# -- the genuine sample --------------------------------------------------------------------------
def test_sample_replays_all_four_rtmrs_exactly() -> None:
    events = raw_events()
    assert len(events) == 30
    replayed = replay_event_log(EVENT_LOG.read_text())
    assert replayed == quote().rtmrs
    tcb = info()["info"]["tcb_info"]
    assert [r.hex() for r in replayed] == [tcb[f"rtmr{i}"] for i in range(4)]
    assert replay_event_log(parse_event_log(events)) == replayed  # Event objects replay alike


def test_runtime_digests_follow_dstack_formula() -> None:
    runtime = [e for e in parse_event_log(raw_events()) if e.is_runtime]
    assert [e.name for e in runtime][:3] == ["system-preparing", "app-id", "compose-hash"]
    assert len(runtime) == 10 and all(e.imr == 3 for e in runtime)
    for event in runtime:
        assert runtime_event_digest(event.event_type, event.name, event.payload) == event.digest
    # The formula, spelled out for one event: type as u32 LE, ":", name, ":", payload bytes.
    compose = next(e for e in runtime if e.name == "compose-hash")
    spelled = hashlib.sha384(
        DSTACK_RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":compose-hash:" + COMPOSE_HASH
    ).digest()
    assert compose.digest == spelled


def test_runtime_values_match_the_info_document() -> None:
    values = runtime_values(raw_events())
    doc = info()["info"]
    assert values["compose-hash"] == COMPOSE_HASH == bytes.fromhex(doc["compose_hash"])
    assert values["app-id"] == bytes.fromhex(doc["app_id"])
    assert values["instance-id"] == bytes.fromhex(doc["instance_id"])
    assert values["os-image-hash"] == bytes.fromhex(doc["os_image_hash"])
    assert values["key-provider"] == doc["key_provider_info"]
    assert json.loads(str(values["key-provider"]))["name"] == "kms"


def test_compose_hash_is_sha256_of_app_compose_and_sits_in_mr_config_id() -> None:
    tcb = info()["info"]["tcb_info"]
    assert app_compose_hash(tcb["app_compose"]) == COMPOSE_HASH
    assert hashlib.sha256(tcb["app_compose"].encode()).digest() == COMPOSE_HASH
    assert bytes.fromhex(tcb["compose_hash"]) == COMPOSE_HASH
    assert quote().mr_config_id == b"\x01" + COMPOSE_HASH + bytes(15)
    assert dstack_mr_config_id(COMPOSE_HASH) == quote().mr_config_id
    # One changed character of the compose document is another application.
    assert app_compose_hash(tcb["app_compose"].replace("datadog", "datadoh", 1)) != COMPOSE_HASH


def test_pinned_compose_hash_passes() -> None:
    report = VerificationReport(subject="dstack TDX quote")
    values = check_event_log(
        report, quote(), raw_events(), pinned_compose_hashes=[bytes(32), COMPOSE_HASH]
    )
    assert report.ok, report.to_text()
    assert [s.name for s in report.steps] == ["event log", "app compose hash"]
    assert "30 events replay RTMR0..3" in report.step("event log").detail
    assert "mr_config_id = 0x01 || compose_hash" in report.step("app compose hash").detail
    assert values is not None and values["compose-hash"] == COMPOSE_HASH
    assert report.facts["compose_hash"] == COMPOSE_HASH.hex()


# -- tampered logs -------------------------------------------------------------------------------
def _digest_changed(events: list[dict[str, Any]], at: int) -> None:
    events[at]["digest"] = flip_hex(events[at]["digest"], 47)


def _payload_resigned(events: list[dict[str, Any]], at: int) -> None:
    """A new payload with its digest recomputed: consistent event, but not what RTMR3 holds."""
    event = events[at]
    payload = bytes(32)
    event["event_payload"] = payload.hex()
    event["digest"] = runtime_event_digest(event["event_type"], event["event"], payload).hex()


def _removed(events: list[dict[str, Any]], at: int) -> None:
    del events[at]


def _swapped_with_next(events: list[dict[str, Any]], at: int) -> None:
    events[at], events[at + 1] = events[at + 1], events[at]


@pytest.mark.parametrize(
    ("change", "at", "rtmr"),
    [
        (_digest_changed, 0, 0),
        (_digest_changed, 11, 1),
        (_digest_changed, 16, 2),
        (_digest_changed, 22, 3),
        (_payload_resigned, 22, 3),
        (_removed, 3, 0),
        (_removed, 17, 2),
        (_removed, 29, 3),
        (_swapped_with_next, 2, 0),  # two RTMR0 events
        (_swapped_with_next, 16, 2),  # the two RTMR2 events
        (_swapped_with_next, 21, 3),  # app-id and compose-hash
    ],
)
def test_tampered_log_fails_naming_the_rtmr(change: Any, at: int, rtmr: int) -> None:
    events = copy.deepcopy(raw_events())
    change(events, at)
    report = check(events, [COMPOSE_HASH])
    step = report.step("event log")
    assert not step.ok and not report.ok
    assert f"RTMR{rtmr} replays to " in step.detail
    assert f"the quote has {quote().rtmrs[rtmr].hex()}" in step.detail
    assert step.expected == f"rtmr{rtmr}={quote().rtmrs[rtmr].hex()}"
    assert step.actual is not None and step.actual.startswith(f"rtmr{rtmr}=")
    others = [i for i in range(4) if i != rtmr]
    assert all(f"RTMR{i}" not in step.detail for i in others)
    assert not report.step("app compose hash").ok


def test_event_moved_to_another_rtmr_names_both() -> None:
    events = copy.deepcopy(raw_events())
    events[8]["imr"] = 1
    step = check(events, [COMPOSE_HASH]).step("event log")
    assert not step.ok
    assert "RTMR0 replays to" in step.detail and "RTMR1 replays to" in step.detail


def test_swapped_payload_with_kept_digest_fails() -> None:
    """Replay still matches (digests unchanged), but the payload is not the one measured."""
    events = copy.deepcopy(raw_events())
    at = index_of(events, "compose-hash")
    events[at]["event_payload"] = flip_hex(events[at]["event_payload"], 31)
    assert replay_event_log(events) == quote().rtmrs
    report = check(events, [COMPOSE_HASH])
    step = report.step("event log")
    assert not step.ok
    assert f"RTMR3 event {at} 'compose-hash': digest {events[at]['digest']}" in step.detail
    assert not report.step("app compose hash").ok
    with pytest.raises(EventLogError, match="'compose-hash': digest"):
        runtime_values(events)


def test_duplicate_value_is_refused() -> None:
    events = copy.deepcopy(raw_events())
    events.append(copy.deepcopy(events[index_of(events, "compose-hash")]))
    with pytest.raises(EventLogError, match="'compose-hash' appears more than once"):
        runtime_values(events)


# -- the compose hash pin ------------------------------------------------------------------------
def test_wrong_pin_fails_with_both_values() -> None:
    wrong = bytes.fromhex(flip_hex(COMPOSE_HASH.hex()))
    report = check(raw_events(), [wrong])
    step = report.step("app compose hash")
    assert report.step("event log").ok and not step.ok and not report.ok
    assert step.detail == f"compose hash {COMPOSE_HASH.hex()} is not pinned (pinned: {wrong.hex()})"
    assert step.expected == wrong.hex() and step.actual == COMPOSE_HASH.hex()


def test_no_pin_fails_saying_what_to_pin() -> None:
    report = check(raw_events(), [])
    step = report.step("app compose hash")
    assert not step.ok and not report.ok
    assert (
        step.detail == f"no app compose hash is pinned: pin app_compose_hash = {COMPOSE_HASH.hex()}"
    )


def test_mr_config_id_must_carry_the_compose_hash() -> None:
    other = b"\x01" + bytes(32) + bytes(15)
    report = check(raw_events(), [COMPOSE_HASH], dataclasses.replace(quote(), mr_config_id=other))
    step = report.step("app compose hash")
    assert not step.ok
    assert step.expected == dstack_mr_config_id(COMPOSE_HASH).hex() and step.actual == other.hex()


def test_zero_mr_config_id_is_not_required() -> None:
    parsed = dataclasses.replace(quote(), mr_config_id=bytes(48))
    report = check(raw_events(), [COMPOSE_HASH], parsed)
    assert report.ok, report.to_text()
    assert "mr_config_id is zero" in report.step("app compose hash").detail


def test_log_without_compose_hash_fails() -> None:
    """A TD whose RTMR3 holds no compose hash has no application to pin."""
    events = [e for e in raw_events() if e["imr"] != 3]
    parsed = dataclasses.replace(quote(), rtmrs=(*quote().rtmrs[:3], bytes(48)))
    report = check(events, [COMPOSE_HASH], parsed)
    assert report.step("event log").ok
    step = report.step("app compose hash")
    assert not step.ok and "no compose-hash event" in step.detail


# -- malformed logs ------------------------------------------------------------------------------
def _set(field: str, value: Any) -> Any:
    def change(events: list[dict[str, Any]]) -> None:
        events[5][field] = value

    return change


def _drop(field: str) -> Any:
    def change(events: list[dict[str, Any]]) -> None:
        del events[5][field]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("digest", "00" * 47), "digest must be 48 bytes"),
        (_set("digest", "00" * 64), "digest must be 48 bytes"),
        (_set("digest", "zz" * 48), "digest must be a hex string"),
        (_set("digest", 7), "digest must be a hex string"),
        (_drop("digest"), "digest must be a hex string"),
        (_set("imr", 4), "imr must be an integer 0..3"),
        (_set("imr", -1), "imr must be an integer 0..3"),
        (_set("imr", True), "imr must be an integer 0..3"),
        (_set("imr", "0"), "imr must be an integer 0..3"),
        (_drop("imr"), "imr must be an integer 0..3"),
        (_set("event_type", "4"), "event_type must be an integer"),
        (_set("event_type", 1 << 32), "event_type 4294967296 is not a u32"),
        (_set("event_payload", "abc"), "event_payload must be a hex string"),
        (_set("event", 5), "event name must be a string"),
    ],
)
def test_malformed_event_raises(change: Any, message: str) -> None:
    events = copy.deepcopy(raw_events())
    change(events)
    with pytest.raises(EventLogError, match=f"event 5: {message}"):
        parse_event_log(events)
    with pytest.raises(EventLogError):
        replay_event_log(events)
    report = check(events, [COMPOSE_HASH])
    assert not report.ok
    assert report.step("event log").detail.startswith("malformed event log: event 5:")


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ('{"imr": 0}', "must be a JSON list"),
        ("[1]", "event 0 must be a JSON object"),
    ],
)
def test_malformed_log_raises(log: str | bytes, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        parse_event_log(log)
