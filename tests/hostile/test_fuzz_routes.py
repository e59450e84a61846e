"""Hypothesis against every route of a real gateway and a real node on loopback.

Whatever arrives — random JSON, random bytes, huge fields, weird unicode, integers past 2**63,
wrong types in every envelope field, well-formed envelopes around random base64, sealed envelopes
around random plaintext, random path parameters, query strings and headers — the servers answer:

- never 500 or 502 (a 503 only as a proper SERVICE_UNAVAILABLE);
- every error as ``{"error": {"code", "message"}}`` with a known code and its own status;
- within 30 s (the client's timeout: a hang fails the test);
- without logging an internal error, and with bounded memory over the whole run.

Fuzzed requests never cost real generation: node tickets and gateway locks carry a few units, and
a body that could validate as a chat request always has a small ``max_tokens``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hostile.conftest import (
    CHAT,
    EMBED,
    FUZZ_UNITS,
    Target,
    check_response,
    rss_bytes,
    ticket_headers,
)
from veil.hazmat import v1, v3
from veil.wire.envelopes import MAX_ID, MAX_REQUEST_UNITS, RESERVATION_HEADER

pytestmark = pytest.mark.slow


def observe(response: httpx.Response, what: str = "") -> None:
    """Check the invariants and tally the status (``--hypothesis-show-statistics``)."""
    event(f"{response.status_code}")
    check_response(response, what)


FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
FEW = settings(FUZZ, max_examples=40)
MORE = settings(FUZZ, max_examples=80)

ROUTES = {"chat": "chat/completions", "embeddings": "embeddings", "images": "images/generations"}
CONFIDENTIAL = [f"/v1/confidential/{path}" for path in ROUTES.values()]
PLAIN = [f"/v1/{path}" for path in ROUTES.values()]
ADMIN_POSTS = ["/admin/users", "/admin/stacks", "/admin/stacks/1/top-up"]
GATEWAY_POSTS = ["/v1/nodes/lock", *CONFIDENTIAL, *PLAIN, *ADMIN_POSTS]
NODE_GETS = ["/v1/models", "/v1/keys", "/health", "/metrics", "/v1/attestation"]
GATEWAY_GETS = ["/v1/models", "/v1/stacks", "/health", "/metrics", "/admin/stacks"]

#: Memory the whole run may add to the process peak (servers run in this process's threads).
RSS_BOUND = 300 * 1024 * 1024

# --- strategies ---------------------------------------------------------------------------------

SPECIAL_INTS = [
    0,
    -1,
    1,
    2**31,
    2**32,
    2**53 + 1,
    2**62,
    2**62 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    -(2**63) - 1,
    2**1000,
    -(2**1000),
]
WEIRD_TEXT = [
    "",
    " ",
    "\x00",
    "\u202e\u0041\u202c",
    "\ufeff",
    "\u200b" * 20,
    "😀" * 8,
    "\U0010ffff",
    "Z̸̡̛͓a̷̢̛l̵g̶o̴",
    "\u03a9\u2248\u00e7\u221a\u222b\u02dc\u00b5\u2264\u2265\u00f7",
    "../../../../etc/passwd",
    "%00%0a%0d",
    "' OR 1=1; DROP TABLE stacks; --",
    "<script>alert(1)</script>",
    "\\u0000\\ud800",
    "null",
    "NaN",
    "smollm2-135m-instruct\x00",
    CHAT,
    EMBED,
    "stand-in-images",
]

big_ints = st.integers() | st.sampled_from(SPECIAL_INTS)
weird_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.sampled_from(
    WEIRD_TEXT
)
huge_text = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "é", "😀", "\x00", " ", "\u202e", "ab\n"]),
    st.integers(5_000, 300_000),
)
huge_list = st.builds(
    lambda item, n: [item] * n,
    st.sampled_from([0, "x", None, {}, [], 2**70]),
    st.integers(1, 40_000),
)
scalars = st.none() | st.booleans() | big_ints | st.floats() | weird_text
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(weird_text, children, max_size=6)
    ),
    max_leaves=20,
)
anything = json_values | huge_text | huge_list


def encode(value: Any, ascii_only: bool = True) -> bytes:
    """JSON as a lenient client would send it (NaN and Infinity included: Python emits them)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


raw_bodies = st.one_of(
    st.builds(encode, json_values, st.booleans()),
    st.binary(max_size=2_000),
    st.builds(lambda v: encode({"model": v}), anything),
    st.builds(
        nested, st.sampled_from([50, 1_000, 5_000, 100_000]), st.sampled_from(["array", "object"])
    ),
    st.builds(lambda n: b'{"model": ' + b"9" * n + b"}", st.sampled_from([4_301, 10_000, 100_000])),
    st.builds(lambda n: b'{"max_num_tokens": 1e' + str(n).encode() + b"}", st.integers(0, 400)),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"NaN", b"-Infinity", b"\xef\xbb\xbf{}"]),
)

# Header values h11 will send: bytes without CR/LF/NUL or edge whitespace, latin-1 included.
header_values = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if b >= 0x21 and b != 0x7F)
) | st.sampled_from(
    [
        b"Bearer",
        b"Bearer \t x",
        b"Basic Zm9vOmJhcg==",
        b"bearer veil_" + b"A" * 43,
        b"Bearer veil_",
        b"Bearer x",
        b"Bearer \xff\xfe",
        b"Bearer veil_" + b"A" * 5_000,
    ]
)


@st.composite
def auth_headers(draw: st.DrawFn, target: Target, *, admin: bool = False) -> dict[str, str | bytes]:
    """Nothing, garbage, a valid user key or (when ``admin``) the admin key."""
    choices = ["none", "garbage", "user"] + (["admin"] * 2 if admin else [])
    choice = draw(st.sampled_from(choices))
    headers: dict[str, str | bytes] = {}
    if choice == "garbage":
        headers["authorization"] = draw(header_values)
    elif choice == "user":
        headers["authorization"] = f"Bearer {target.user_key}"
    elif choice == "admin":
        headers["authorization"] = f"Bearer {target.deployment.admin_key}"
    if draw(st.booleans()):
        headers["content-type"] = draw(
            st.sampled_from(["application/json", "text/plain", "multipart/form-data", "x/y; a=b"])
        )
    if draw(st.booleans()):
        headers["x-veil-ticket"] = draw(header_values)
    return headers


MAX_QUERY = 60_000  # httpx refuses URLs over 64 KiB before sending them


def query_string(pairs: list[tuple[str, str]]) -> str:
    query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    if len(query) <= MAX_QUERY:
        return query
    cut = query[:MAX_QUERY]
    return cut[: cut.rfind("%")] if "%" in cut[-3:] else cut


queries = st.lists(
    st.tuples(weird_text, weird_text | huge_text.map(lambda s: s[:5_000])), max_size=4
)

B64_FIELDS = {
    "ciphertext": 40,
    "client_dh_public_key": 32,
    "node_dh_public_key": 32,
    "nonce": 12,
    "plaintext_body_hash": 32,
    "salt": 16,
    "request_id": 16,
}
ENVELOPE_FIELDS = [
    *B64_FIELDS,
    "model_name",
    "stack_small_id",
    "num_compute_units",
    "stream",
    "protocol",
    "key_id",
    "timestamp",
]


@st.composite
def b64_of_size(draw: st.DrawFn, right: int) -> str:
    size = draw(st.sampled_from([0, 1, right - 1, right, right, right + 1, 64, 4096]))
    data = os.urandom(max(size, 0))
    text = base64.b64encode(data).decode()
    mangle = draw(st.sampled_from(["none", "none", "urlsafe", "unpadded", "spaces", "newline"]))
    if mangle == "urlsafe":
        text = base64.urlsafe_b64encode(data).decode()
    elif mangle == "unpadded":
        text = text.rstrip("=")
    elif mangle == "spaces":
        text = f" {text} "
    elif mangle == "newline":
        text = text[:4] + "\n" + text[4:]
    return text


@st.composite
def mutated_envelope(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A real envelope with some fields deleted, retyped, resized or replaced."""
    envelope = dict(base)
    for name in draw(st.lists(st.sampled_from(ENVELOPE_FIELDS), min_size=1, max_size=4)):
        action = draw(st.sampled_from(["delete", "value", "b64", "huge", "int"]))
        if action == "delete":
            envelope.pop(name, None)
        elif action == "value":
            envelope[name] = draw(json_values)
        elif action == "b64":
            envelope[name] = draw(b64_of_size(B64_FIELDS.get(name, 16)))
        elif action == "huge":
            envelope[name] = draw(huge_text | huge_list)
        else:
            envelope[name] = draw(big_ints)
    if draw(st.booleans()):
        envelope.update(draw(st.dictionaries(weird_text, json_values, max_size=3)))
    return envelope


MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens")
#: Budgets above this are left as drawn (up to 2**64 and past): out of every route's range, they
#: must be a 400 naming the field (a 500 from the ledger's integer bind, once), never a generation.
#: In-range budgets too large to afford are fuzzed in test_integer_edges.py, on small stacks.
UNAFFORDABLE = MAX_REQUEST_UNITS


def bounded(body: Any) -> Any:
    """Cap generation: a body that could validate as chat asks for at most 3 tokens; a budget
    past the range is left as drawn (refused before any generation)."""
    if not isinstance(body, dict):
        return body
    valid = [
        k
        for k in MAX_TOKEN_KEYS
        # exactly int: bool is not a count
        if type(body.get(k)) is int and 1 <= body[k] <= UNAFFORDABLE
    ]
    for k in valid:
        body[k] = min(body[k], 3)
    invalid = [k for k in MAX_TOKEN_KEYS if body.get(k) is not None and k not in valid]
    if not valid and not invalid:
        body["max_tokens"] = 2
    return body


SAMPLING_KEYS = [
    "temperature",
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "response_format",
    "tools",
    "user",
]


@st.composite
def openai_body(draw: st.DrawFn, endpoint: str) -> Any:
    """A near-valid OpenAI body for ``endpoint``, then a few fields broken or replaced."""
    if endpoint == "chat":
        body: dict[str, Any] = {
            "model": CHAT,
            "messages": [
                {
                    "role": draw(
                        st.sampled_from(["user", "system", "assistant", "developer", "x"])
                    ),
                    "content": draw(
                        weird_text
                        | huge_text
                        | st.lists(
                            st.fixed_dictionaries({"type": st.just("text"), "text": weird_text}),
                            max_size=3,
                        )
                        | st.none()
                    ),
                }
            ],
            "max_tokens": 2,
        }
        extra_keys = SAMPLING_KEYS
    elif endpoint == "embeddings":
        body = {"model": EMBED, "input": draw(weird_text | st.lists(weird_text, max_size=4))}
        extra_keys = ["encoding_format", "dimensions", "user"]
    else:
        body = {"model": "stand-in-images", "prompt": draw(weird_text), "size": "8x8"}
        extra_keys = ["n", "size", "width", "height", "response_format", "quality"]
    keys = [*body, *extra_keys]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
        body[key] = draw(anything | big_ints)
    if draw(st.booleans()) and endpoint == "chat":
        body[draw(st.sampled_from(SAMPLING_KEYS))] = draw(big_ints | st.floats() | weird_text)
    return bounded(body)


def seal(
    target: Target,
    route: str,
    plaintext: bytes,
    suite: str,
    stack_id: int,
    units: int,
    reservation_id: str | None = None,
) -> bytes:
    """A genuine envelope (v1, or v3 bound to ``reservation_id``) around ``plaintext`` for the
    node's current key (v3: its post-quantum one)."""
    node_key = target.node.public_key
    document: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        document = json.loads(plaintext)
    model = document.get("model") if isinstance(document, dict) else None
    model_name = model if isinstance(model, str) and 1 <= len(model) <= 256 else CHAT
    stream = document.get("stream") if isinstance(document, dict) else None
    stream_flag = stream if isinstance(stream, bool) else None
    if suite == "v1":
        envelope, _ = v1.seal_request(
            node_key,
            plaintext,
            model_name=model_name,
            stack_small_id=stack_id,
            num_compute_units=units,
            stream=stream_flag,
        )
    else:
        hybrid = target.node.keyring.current.hybrid
        assert hybrid is not None
        envelope, _ = v3.seal_request(
            hybrid.public_key,
            hybrid.key_id,
            plaintext,
            node_signing_key=target.node.keyring.signing_public_key,
            endpoint=route,
            model_name=model_name,
            stack_small_id=stack_id,
            num_compute_units=units,
            stream=stream_flag,
            reservation_id=reservation_id,
        )
    return envelope.model_dump_json().encode()


def valid_envelope(target: Target, route: str = CONFIDENTIAL[0]) -> dict[str, Any]:
    body = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    sealed = seal(target, route, encode(body), "v1", target.stacks[CHAT], FUZZ_UNITS)
    document: dict[str, Any] = json.loads(sealed)
    return document


def plaintext_for(endpoint: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        openai_body(endpoint).map(encode),
        st.builds(encode, json_values, st.booleans()),
        st.binary(max_size=500),
        st.builds(nested, st.sampled_from([1_000, 100_000]), st.just("array")),
        st.builds(lambda n: b'{"model": ' + b"9" * n + b"}", st.just(10_000)),
    )


def endpoint_of(route: str) -> str:
    for endpoint, path in ROUTES.items():
        if route.endswith(path):
            return endpoint
    raise AssertionError(route)


# --- node ---------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), route=st.sampled_from(CONFIDENTIAL + PLAIN), body=raw_bodies)
def test_node_posts_survive_random_bodies(
    target: Target, data: st.DataObject, route: str, body: bytes
) -> None:
    ticketed = data.draw(st.booleans(), label="ticketed")
    headers = (
        ticket_headers(target.gateway_key, body) if ticketed else data.draw(auth_headers(target))
    )
    response = target.request("POST", f"{target.node_url}{route}", content=body, headers=headers)
    observe(response, f"ticketed={ticketed}")
    if not ticketed and "x-veil-ticket" not in headers:
        assert response.status_code == 401  # no ticket, nothing read past it


@FUZZ
@given(data=st.data(), route=st.sampled_from(CONFIDENTIAL))
def test_node_survives_mutated_envelopes(target: Target, data: st.DataObject, route: str) -> None:
    envelope = data.draw(mutated_envelope(valid_envelope(target, route)), label="envelope")
    body = encode(envelope, data.draw(st.booleans()))
    response = target.request(
        "POST",
        f"{target.node_url}{route}",
        content=body,
        headers=ticket_headers(target.gateway_key, body),
    )
    observe(response)
    assert response.status_code != 200 or route.endswith("chat/completions")


@MORE
@given(data=st.data(), route=st.sampled_from(CONFIDENTIAL), suite=st.sampled_from(["v1", "v3"]))
def test_node_survives_sealed_random_plaintext(
    target: Target, data: st.DataObject, route: str, suite: str
) -> None:
    """Past the crypto: what the node decrypts is fuzzed too (validation inside the TEE)."""
    plaintext = data.draw(plaintext_for(endpoint_of(route)), label="plaintext")
    body = seal(target, route, plaintext, suite, 1, FUZZ_UNITS)
    response = target.request(
        "POST",
        f"{target.node_url}{route}",
        content=body,
        headers=ticket_headers(target.gateway_key, body),
    )
    observe(response, suite)


@FUZZ
@given(data=st.data(), route=st.sampled_from(PLAIN))
def test_node_plain_routes_survive_near_valid_bodies(
    target: Target, data: st.DataObject, route: str
) -> None:
    body = encode(data.draw(openai_body(endpoint_of(route))), data.draw(st.booleans()))
    response = target.request(
        "POST",
        f"{target.node_url}{route}",
        content=body,
        headers=ticket_headers(target.gateway_key, body),
    )
    observe(response)


@FUZZ
@given(data=st.data(), route=st.sampled_from(NODE_GETS), pairs=queries)
def test_node_gets_survive_random_queries_and_headers(
    target: Target, data: st.DataObject, route: str, pairs: list[tuple[str, str]]
) -> None:
    if route == "/v1/attestation" and data.draw(st.booleans()):
        nonce = data.draw(b64_of_size(32) | weird_text | huge_text.map(lambda s: s[:8_000]))
        pairs = [("nonce", nonce), *pairs]
    url = f"{target.node_url}{route}?{query_string(pairs)}"
    response = target.request("GET", url, headers=data.draw(auth_headers(target)))
    observe(response)
    if route != "/v1/attestation":
        assert response.status_code == 200, response.text


# --- gateway ------------------------------------------------------------------------------------


@MORE
@given(data=st.data(), route=st.sampled_from(GATEWAY_POSTS), body=raw_bodies)
def test_gateway_posts_survive_random_bodies(
    target: Target, data: st.DataObject, route: str, body: bytes
) -> None:
    headers = data.draw(auth_headers(target, admin=True))
    response = target.request("POST", f"{target.gateway_url}{route}", content=body, headers=headers)
    observe(response)


@FUZZ
@given(data=st.data(), route=st.sampled_from(CONFIDENTIAL), locked=st.booleans())
def test_gateway_survives_mutated_envelopes(
    target: Target, data: st.DataObject, route: str, locked: bool
) -> None:
    """Random field damage; with a lock first, what survives the gateway reaches the node."""
    base = valid_envelope(target, route)
    if locked:
        lock = target.lock()
        base["stack_small_id"] = lock["stack_small_id"]
    envelope = data.draw(mutated_envelope(base), label="envelope")
    response = target.request(
        "POST",
        f"{target.gateway_url}{route}",
        content=encode(envelope, data.draw(st.booleans())),
        headers={**target.auth(), "content-type": "application/json"},
    )
    observe(response)


@FEW
@given(data=st.data(), route=st.sampled_from(CONFIDENTIAL), suite=st.sampled_from(["v1", "v3"]))
def test_gateway_forwards_sealed_random_plaintext_safely(
    target: Target, data: st.DataObject, route: str, suite: str
) -> None:
    """Lock, seal fuzzed plaintext, send through the gateway: the node's answer comes back intact
    (a proper error or a sealed answer) and the reservation is settled either way."""
    endpoint = endpoint_of(route)
    model = {"chat": CHAT, "embeddings": EMBED, "images": CHAT}[endpoint]
    lock = target.lock(model)
    plaintext = data.draw(plaintext_for(endpoint), label="plaintext")
    body = seal(
        target, route, plaintext, suite, lock["stack_small_id"], FUZZ_UNITS, lock["reservation_id"]
    )
    response = target.request(
        "POST",
        f"{target.gateway_url}{route}",
        content=body,
        # This lock's reservation, the one a v3 envelope is bound to (not an older fuzz lock's).
        headers={
            **target.auth(),
            "content-type": "application/json",
            RESERVATION_HEADER: lock["reservation_id"],
        },
    )
    observe(response, suite)


@FUZZ
@given(data=st.data(), route=st.sampled_from(PLAIN))
def test_gateway_plain_routes_survive_near_valid_bodies(
    target: Target, data: st.DataObject, route: str
) -> None:
    body = encode(data.draw(openai_body(endpoint_of(route))), data.draw(st.booleans()))
    response = target.request(
        "POST",
        f"{target.gateway_url}{route}",
        content=body,
        headers={**target.auth(), "content-type": "application/json"},
    )
    observe(response)


def sometimes_valid(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    """Mostly a value the route accepts (or the field left out), one time in four not."""
    return st.one_of(st.none(), valid, valid, wrong)


@FUZZ
@given(
    model=st.one_of(
        st.sampled_from([CHAT, EMBED]), st.just(CHAT), weird_text | huge_text | big_ints
    ),
    max_num_tokens=sometimes_valid(st.integers(1, 64), big_ints | st.floats() | weird_text),
    timeout=sometimes_valid(st.integers(1, 3600), big_ints | st.floats() | weird_text),
    nonce=sometimes_valid(b64_of_size(32), weird_text | big_ints | b64_of_size(8)),
    extra=st.dictionaries(weird_text, json_values, max_size=2),
)
def test_gateway_lock_survives_random_fields(
    target: Target, model: Any, max_num_tokens: Any, timeout: Any, nonce: Any, extra: dict[str, Any]
) -> None:
    ask = {**extra, "model": model}  # unknown keys are ignored by the gateway
    for key, value in (
        ("max_num_tokens", max_num_tokens),
        ("timeout", timeout),
        ("attestation_nonce", nonce),
    ):
        if value is not None:
            ask[key] = value
    response = target.request(
        "POST",
        f"{target.gateway_url}/v1/nodes/lock",
        content=encode(ask),
        headers=target.auth(),
    )
    observe(response)


@FUZZ
@given(data=st.data(), route=st.sampled_from(GATEWAY_GETS), pairs=queries)
def test_gateway_gets_survive_random_queries_and_headers(
    target: Target, data: st.DataObject, route: str, pairs: list[tuple[str, str]]
) -> None:
    if route == "/admin/stacks" and data.draw(st.booleans()):
        pairs = [("user", data.draw(st.sampled_from(["fuzzer", "admin"]) | weird_text)), *pairs]
    headers = data.draw(auth_headers(target, admin=True))
    response = target.request(
        "GET", f"{target.gateway_url}{route}?{query_string(pairs)}", headers=headers
    )
    observe(response)
    if route in ("/v1/models", "/health", "/metrics"):
        assert response.status_code == 200, response.text


path_ids = st.one_of(
    big_ints.map(str),
    weird_text.map(lambda s: urllib.parse.quote(s, safe="")).filter(bool),  # "" is another route
    st.sampled_from(["1", "01", "+1", "-0", "1.0", "1e3", "0x10", "\u0661", "%20", "9" * 5_000]),
)


@FUZZ
@given(
    data=st.data(),
    stack_id=path_ids,
    units=big_ints | st.floats() | weird_text | json_values,
    with_body=st.booleans(),
)
def test_admin_stack_routes_survive_random_ids_and_bodies(
    target: Target, data: st.DataObject, stack_id: str, units: Any, with_body: bool
) -> None:
    headers = data.draw(auth_headers(target, admin=True))
    shown = target.request("GET", f"{target.gateway_url}/admin/stacks/{stack_id}", headers=headers)
    observe(shown)
    body = encode({"units": units}) if with_body else data.draw(raw_bodies)
    topped = target.request(
        "POST",
        f"{target.gateway_url}/admin/stacks/{stack_id}/top-up",
        content=body,
        headers=headers,
    )
    observe(topped)
    if headers.get("authorization") != f"Bearer {target.deployment.admin_key}":
        assert {shown.status_code, topped.status_code} <= {401, 404, 400}


@FUZZ
@given(
    data=st.data(),
    name=weird_text | huge_text | big_ints | json_values,
    user=st.sampled_from(["fuzzer", "admin"]) | weird_text | big_ints,
    model=st.sampled_from([CHAT, EMBED]) | weird_text | huge_text | big_ints,
    units=big_ints | st.floats() | weird_text,
    price=st.none() | big_ints | st.floats(),
)
def test_admin_create_routes_survive_random_fields(
    target: Target,
    data: st.DataObject,
    name: Any,
    user: Any,
    model: Any,
    units: Any,
    price: Any,
) -> None:
    headers = data.draw(auth_headers(target, admin=True))
    made = target.request(
        "POST", f"{target.gateway_url}/admin/users", content=encode({"name": name}), headers=headers
    )
    observe(made)
    stack: dict[str, Any] = {"user": user, "model": model, "units": units}
    if price is not None:
        stack["price_per_million"] = price
    created = target.request(
        "POST", f"{target.gateway_url}/admin/stacks", content=encode(stack), headers=headers
    )
    observe(created)


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
segments = st.lists(
    weird_text.map(lambda s: urllib.parse.quote(s, safe=""))
    | st.sampled_from(["v1", "admin", ".."]),
    min_size=1,
    max_size=4,
)


@FEW
@given(server=st.sampled_from(["node", "gateway"]), method=methods, parts=segments, body=raw_bodies)
def test_unknown_routes_and_methods_are_404(
    target: Target, server: str, method: str, parts: list[str], body: bytes
) -> None:
    base = target.node_url if server == "node" else target.gateway_url
    path = "/" + "/".join(parts)
    response = target.request(method, f"{base}{path}", content=body if method != "GET" else None)
    observe(response)


# --- exhaustive where a list is short enough ---------------------------------------------------

WRONG_TYPES: list[Any] = [
    None,
    True,
    1.5,
    float("nan"),
    -1,
    2**63,
    2**1000,
    "",
    "not base64!!",
    "x" * 300_001,  # not base64 either: its length is not a multiple of 4
    [],
    {},
    [1, 2, 3],
    {"nested": ["deep"]},
]
REQUIRED_FIELDS = {*B64_FIELDS} - {"request_id"} | {"model_name", "stack_small_id"}


def must_refuse(name: str, value: Any) -> bool:
    """Whether the envelope with ``name`` set to ``value`` cannot even parse."""
    if isinstance(value, list | dict):
        return True  # no field takes a list or an object
    if name == "model_name":  # any 1-256 character string parses (then: unknown model, 404)
        return not (isinstance(value, str) and 1 <= len(value) <= 256)
    return name in REQUIRED_FIELDS


def test_every_envelope_field_refuses_every_wrong_type(target: Target) -> None:
    """Each envelope field, each wrong type, at both servers: never a 5xx, and a 400 wherever
    the envelope cannot parse (``must_refuse``). An optional field may take ``null`` (``key_id``
    any short string) and then the request goes on to a later, still clean, answer."""
    for route in CONFIDENTIAL:
        base = valid_envelope(target, route)
        for name in ENVELOPE_FIELDS:
            for value in WRONG_TYPES:
                body = encode({**base, name: value})
                at_node = target.request(
                    "POST",
                    f"{target.node_url}{route}",
                    content=body,
                    headers=ticket_headers(target.gateway_key, body),
                )
                at_gateway = target.request(
                    "POST",
                    f"{target.gateway_url}{route}",
                    content=body,
                    headers={**target.auth(), "content-type": "application/json"},
                )
                for response in (at_node, at_gateway):
                    check_response(response, f"{name}={value!r:.40}")
                    if must_refuse(name, value):
                        assert response.status_code == 400, (name, value, response.text)


def test_bodies_over_the_limit_are_413_everywhere(target: Target) -> None:
    """5 MiB (the limit is 4 MiB) to every POST route of both servers, with and without a
    declared length that gives it away: PAYLOAD_TOO_LARGE, nothing else."""
    big = b'{"model": "' + b"a" * (5 * 2**20) + b'"}'
    headers = {**target.auth(target.deployment.admin_key), "content-type": "application/json"}
    for base, routes in (
        (target.node_url, CONFIDENTIAL + PLAIN),
        (target.gateway_url, GATEWAY_POSTS),
    ):
        for route in routes:
            ticketed = {**headers, **ticket_headers(target.gateway_key, big)}
            for content in (big, iter([big[:1000], big[1000:]])):  # declared, then chunked
                response = target.request(
                    "POST", f"{base}{route}", content=content, headers=ticketed
                )
                check_response(response)
                assert response.status_code == 413, (route, response.text)


def test_a_prompt_longer_than_the_context_window_is_400_not_502(target: Target) -> None:
    """A prompt the model cannot hold is the caller's error, on every chat route of both
    servers, before any generation (it was a 502 ENGINE_ERROR blaming the backend)."""
    body = {
        "model": CHAT,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hello " * 3_000}],
    }
    raw = encode(body)
    plain = [
        target.request(
            "POST",
            f"{target.gateway_url}/v1/chat/completions",
            content=raw,
            headers=target.auth(),
        ),
        target.request(
            "POST",
            f"{target.node_url}/v1/chat/completions",
            content=raw,
            headers=ticket_headers(target.gateway_key, raw, units=10**6),
        ),
    ]
    route = CONFIDENTIAL[0]
    lock = target.lock(CHAT, units=10**6)
    sealed = seal(target, route, raw, "v3", lock["stack_small_id"], 10**6, lock["reservation_id"])
    confidential = target.request(
        "POST",
        f"{target.gateway_url}{route}",
        content=sealed,
        headers={
            **target.auth(),
            "content-type": "application/json",
            # This lock's units, not an older fuzz lock's few (issue 12 #7).
            RESERVATION_HEADER: lock["reservation_id"],
        },
    )
    for response in [*plain, confidential]:
        check_response(response)
        assert response.status_code == 400, response.text
        assert "context window" in response.text
        assert "hello hello" not in response.text


def test_top_ups_past_the_64_bit_range_are_refused_cleanly(target: Target) -> None:
    """Totals live in signed 64-bit columns: topping a stack past 2**63 - 1 must be a 4xx and
    leave the stack as it was, never an overflow (500 on PostgreSQL, a float on SQLite)."""
    made = target.deployment.admin(
        "POST", "/admin/stacks", json={"user": "fuzzer", "model": EMBED, "units": 2**62}
    )
    assert made.status_code == 201, made.text
    stack_id = made.json()["stack_small_id"]
    answers = [
        target.deployment.admin("POST", f"/admin/stacks/{stack_id}/top-up", json={"units": units})
        for units in (2**62 - 1, 1, 2**62)
    ]
    for answer in answers:
        check_response(answer)
    assert [a.status_code for a in answers] == [200, 400, 400], [a.text for a in answers]
    total = target.deployment.stack(stack_id)["total_units"]
    assert type(total) is int and total == MAX_ID


# --- over the whole run -------------------------------------------------------------------------


def test_zz_no_internal_errors_logged_and_memory_bounded(target: Target) -> None:
    """Runs last in this module: nothing above logged an internal error, and the process peak
    grew less than ``RSS_BOUND`` while the fuzzing ran."""
    internal = [
        line
        for level, name, line in target.logs.handler.entries
        if level >= logging.ERROR and name.startswith(("veil", "uvicorn"))
    ]
    assert not internal, "\n".join(internal[:10])
    grown = rss_bytes() - target.rss_at_start
    assert grown < RSS_BOUND, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    # And both servers still answer.
    assert target.request("GET", f"{target.gateway_url}/health").status_code == 200
    assert target.request("GET", f"{target.node_url}/health").status_code == 200
