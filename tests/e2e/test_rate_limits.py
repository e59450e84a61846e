"""Rate limits through real gateways: two gateways on one ledger and one real Redis, a real node
and the session's real models. Per-user limits set from the CLI and the admin API, 429 with
Retry-After under a flood, the concurrency limit held by a live stream, node refusals weighing
more, another user unaffected, and a Redis that is down failing closed with 503."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import CliRunner

from tests.e2e.conftest import CHAT, Deployment, deploy
from tests.harness import wait_until
from tests.servers import ServerThread
from veil.cli import app as veil_app
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key
from veil.node.service import EngineRegistry

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Pair:
    """Two gateways (same ledger, same Redis key prefix) in front of one node."""

    deployment: Deployment
    urls: list[str]
    database_url: str

    def new_user(self, name: str, **limits: int) -> str:
        made = self.deployment.admin("POST", "/admin/users", json={"name": name, **limits})
        assert made.status_code == 201, made.text
        stack = self.deployment.admin(
            "POST", "/admin/stacks", json={"user": name, "model": CHAT, "units": 10**6}
        )
        assert stack.status_code == 201, stack.text
        return str(made.json()["api_key"])


def stacks(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/stacks", headers={"authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry) -> Iterator[Pair]:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    tmp = tmp_path_factory.mktemp("ratelimit")
    prefix = f"veil:test:rl:{secrets.token_hex(6)}:"
    database_url = f"sqlite+aiosqlite:///{tmp / 'gateway' / 'ledger.db'}"
    servers, deployed = deploy(tmp, [node_registry], redis_url=REDIS_URL, rate_limit_prefix=prefix)
    node, first = servers
    with node, first:
        deployed.started()
        # The second gateway: same ledger, same Redis, same ticket key (one cluster).
        settings = GatewaySettings(
            data_dir=tmp / "gateway-b",
            database_url=database_url,
            nodes=[node.url],
            redis_url=REDIS_URL,
            rate_limit_prefix=prefix,
        )
        second = ServerThread(
            create_gateway_app(settings, load_or_create_gateway_key(tmp / "gateway"))
        )
        with second:
            yield Pair(deployed, [first.url, second.url], database_url)
    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)


def test_a_flood_across_two_gateways_gets_429_with_retry_after(pair: Pair) -> None:
    flooder = pair.new_user("flooder", requests_per_minute=10)
    bystander = pair.new_user("bystander")
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: stacks(pair.urls[i % 2], flooder), range(30)))
    codes = [a.status_code for a in answers]
    # The ten the minute allows, across both gateways together; the rest refused.
    assert codes.count(200) == 10, codes
    assert codes.count(429) == 20, codes
    served_by = {i % 2 for i, a in enumerate(answers) if a.status_code == 200}
    refused_by = {i % 2 for i, a in enumerate(answers) if a.status_code == 429}
    assert refused_by == {0, 1} and served_by, (served_by, refused_by)
    for answer in answers:
        if answer.status_code == 429:
            wait = int(answer.headers["retry-after"])
            assert 1 <= wait <= 120
            error = answer.json()["error"]
            assert error["code"] == "TOO_MANY_REQUESTS"
            assert error["limit"] == "requests_per_minute" and error["limit_value"] == 10
            assert error["retry_after_seconds"] == wait
            assert f"retry in {wait} s" in error["message"]
    # Another user's minute is their own.
    assert [stacks(pair.urls[i % 2], bystander).status_code for i in range(6)] == [200] * 6


def test_limits_set_from_the_cli_apply_at_once_on_every_gateway(pair: Pair) -> None:
    runner = CliRunner()
    db = ["--database-url", pair.database_url, "--json"]
    made = runner.invoke(
        veil_app,
        ["users", "create", "carol", "--requests-per-minute", "3", "--concurrency", "4", *db],
    )
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["requests_per_minute"] == 3 and created["concurrency"] == 4
    key = created["api_key"]
    assert [stacks(pair.urls[i % 2], key).status_code for i in range(5)] == [200] * 3 + [429] * 2
    raised = runner.invoke(
        veil_app,
        ["users", "set-limits", "carol", "--requests-per-minute", "8", *db],
    )
    assert raised.exit_code == 0, raised.output
    assert json.loads(raised.stdout)["effective"] == {"requests_per_minute": 8, "concurrency": 4}
    # Three used of eight. Each gateway reads a user's limits with its key, at most
    # AUTH_CACHE_SECONDS ago: the raise is in force on both within a second (a 429 costs
    # nothing), then the rest of the five fit, on either gateway, and no more.
    for url in pair.urls:
        wait_until(
            lambda url=url: stacks(url, key).status_code == 200, 1.0, f"the raised limit on {url}"
        )
    assert [stacks(pair.urls[i % 2], key).status_code for i in range(4)] == [200] * 3 + [429]
    nobody = runner.invoke(
        veil_app,
        ["users", "set-limits", "nobody", "--concurrency", "2", *db],
    )
    assert nobody.exit_code == 1 and "no user named 'nobody'" in nobody.output


def test_limits_set_from_the_admin_api(pair: Pair) -> None:
    key = pair.new_user("dave", requests_per_minute=2)
    assert [stacks(pair.urls[0], key).status_code for _ in range(3)] == [200, 200, 429]
    changed = pair.deployment.admin(
        "PATCH", "/admin/users/dave/limits", json={"requests_per_minute": 4}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["effective"]["requests_per_minute"] == 4
    assert [stacks(pair.urls[1], key).status_code for _ in range(3)] == [200, 200, 429]
    reset = pair.deployment.admin("POST", "/admin/users/dave/limits", json={"concurrency": 0})
    assert reset.status_code == 200 and reset.json()["concurrency"] is None
    for bad in ({"requests_per_minute": -1}, {"concurrency": 2**31}, {"rpm": 3}):
        refused = pair.deployment.admin("POST", "/admin/users/dave/limits", json=bad)
        assert refused.status_code == 400, (bad, refused.text)
    missing = pair.deployment.admin("PATCH", "/admin/users/nobody/limits", json={"concurrency": 1})
    assert missing.status_code == 404
    # Only an admin may set limits.
    own = httpx.post(
        f"{pair.urls[0]}/admin/users/dave/limits",
        json={"requests_per_minute": 1000},
        headers={"authorization": f"Bearer {pair.new_user('erin')}"},
        timeout=30,
    )
    assert own.status_code == 401


def test_a_live_stream_holds_a_concurrency_slot_until_it_ends(pair: Pair) -> None:
    key = pair.new_user("streamer", concurrency=1)
    auth = {"authorization": f"Bearer {key}"}
    body = {
        "model": CHAT,
        "messages": [
            {
                "role": "user",
                "content": "Write a very long story about a dragon. Use at least 1000 words.",
            }
        ],
        "max_tokens": 400,
        "stream": True,
    }
    with (
        httpx.Client(timeout=120) as http,
        http.stream("POST", f"{pair.urls[0]}/v1/chat/completions", json=body, headers=auth) as s,
    ):
        assert s.status_code == 200
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")
        # While it streams, the one slot is taken, on both gateways.
        for url in pair.urls:
            busy = stacks(url, key)
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"]["limit"] == "concurrency"
            assert busy.headers["retry-after"] == "1"
        for _ in lines:
            pass
    assert stacks(pair.urls[1], key).status_code == 200


def test_requests_the_node_refuses_weigh_more(pair: Pair) -> None:
    from veil.hazmat import v1

    key = pair.new_user("prober", requests_per_minute=10)
    weight = GatewaySettings().failed_request_weight
    lock = pair.deployment.lock(key, CHAT)  # 1
    assert lock.status_code == 200, lock.text
    locked = lock.json()
    import base64

    envelope, _ = v1.seal_request(
        base64.b64decode(locked["public_key"]),
        json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}).encode(),
        model_name=CHAT,
        stack_small_id=locked["stack_small_id"],
        num_compute_units=None,
        stream=None,
    )
    flipped = bytearray(envelope.ciphertext)
    flipped[0] ^= 1
    tampered = envelope.model_copy(update={"ciphertext": bytes(flipped)})
    refused = pair.deployment.post(key, "/v1/confidential/chat/completions", tampered)
    assert refused.status_code == 422, refused.text  # the node opened it and refused it
    assert refused.json()["error"]["code"] == "DECRYPTION_FAILED"
    # 1 (lock) + weight (the refused request) used of 10: exactly the rest is left.
    left = 10 - 1 - weight
    codes = [stacks(pair.urls[i % 2], key).status_code for i in range(left + 1)]
    assert codes == [200] * left + [429], codes


def test_redis_down_answers_503_and_logs_it(
    tmp_path: Path, pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    settings = GatewaySettings(
        data_dir=tmp_path / "gateway-c",
        database_url=pair.database_url,
        nodes=[],
        redis_url="redis://127.0.0.1:1/0",  # nothing listens there
    )
    gateway = ServerThread(create_gateway_app(settings, load_or_create_gateway_key(tmp_path)))
    key = pair.new_user("outage")
    with caplog.at_level("ERROR", logger="veil.gateway.ratelimit"), gateway:
        answer = stacks(gateway.url, key)
        # Admin keys are not rate limited, so the operator can still work.
        admin = httpx.get(
            f"{gateway.url}/admin/stacks",
            headers={"authorization": f"Bearer {pair.deployment.admin_key}"},
            timeout=30,
        )
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "rate limiter is unavailable" in answer.json()["error"]["message"]
    assert admin.status_code == 200
    assert any("fail closed" in r.getMessage() for r in caplog.records)
