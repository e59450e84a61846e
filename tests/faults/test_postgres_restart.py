"""The ledger's PostgreSQL restarts under load: every request succeeds or fails cleanly with 503
(never a 500, never a hang), the gateway recovers by itself, and the books balance afterwards."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.faults.conftest import (
    EMBED,
    EMBED_PATH,
    GatewayProcess,
    PrivatePostgres,
    auth,
    create_account,
    reconcile,
    running,
    seal_v1,
    stacks,
)
from tests.node.conftest import start_node
from tests.servers import wait_until
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.node.service import EngineRegistry

WORKERS = 4
LOAD_SECONDS = 9.0
LOCK_UNITS = 64
LOCK_TIMEOUT = 3  # seconds: reservations of requests that failed after their lock expire soon
HUNG = 30.0  # seconds: a request that takes this long has hung
CLEAN = {(200, "OK"), (503, "SERVICE_UNAVAILABLE")}


@dataclass
class Outcome:
    started: float
    step: str  # "lock" or "request": where it ended
    status: int  # HTTP status; 0 for a transport failure (a hang, a dropped connection)
    code: str
    charged: int = 0  # for a 200: the units its usage says, capped at the reservation


def one_request(client: httpx.Client, url: str, key: str, n: int) -> Outcome:
    """Lock, seal and send one confidential embeddings request; never raises."""
    started = time.monotonic()
    try:
        locked = client.post(
            f"{url}/v1/nodes/lock",
            json={"model": EMBED, "max_num_tokens": LOCK_UNITS, "timeout": LOCK_TIMEOUT},
            headers=auth(key),
        )
        if locked.status_code != 200:
            return Outcome(started, "lock", locked.status_code, locked.json()["error"]["code"])
        envelope, _ = seal_v1(locked.json(), {"model": EMBED, "input": f"fault test input {n}"})
        response = client.post(
            f"{url}{EMBED_PATH}", content=envelope.model_dump_json(), headers=auth(key)
        )
    except httpx.HTTPError as exc:
        return Outcome(started, "transport", 0, type(exc).__name__)
    except ValueError:  # a body that is not our JSON error shape
        return Outcome(started, "body", -1, "NOT_JSON")
    if response.status_code != 200:
        return Outcome(started, "request", response.status_code, response.json()["error"]["code"])
    usage = response.json()["usage"]
    units = usage["prompt_tokens"] + usage.get("completion_tokens", 0)
    return Outcome(started, "request", 200, "OK", min(units, LOCK_UNITS))


def test_postgres_restart_under_load_fails_cleanly_and_recovers(
    tmp_path: Path, node_registry: EngineRegistry, private_postgres: PrivatePostgres
) -> None:
    db = private_postgres.url
    # ~100 requests a second from four workers: far above the default requests-per-minute limit.
    key, stack_ids = create_account(
        db, "loaded", {EMBED: 10_000_000}, requests_per_minute=1_000_000
    )
    gateway_key = public_b64(load_or_create_gateway_key(tmp_path / "gateway"))
    node_server, node = start_node(tmp_path / "node", node_registry, gateway_keys=[gateway_key])
    gateway = GatewayProcess(tmp_path / "gateway", [node.url], database_url=db)
    with node_server, running(gateway.start()):
        gateway.wait_ready(EMBED)
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + LOAD_SECONDS

        def worker(w: int) -> None:
            with httpx.Client(timeout=HUNG) as client:
                n = 0
                while time.monotonic() < deadline:
                    outcomes.append(one_request(client, gateway.url, key, w * 100_000 + n))
                    n += 1

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(WORKERS)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(outcomes) >= 3 * WORKERS, 30, "load before the restart")
            private_postgres.restart()  # -m fast: every connection is cut mid-statement
            restarted = time.monotonic()
        finally:
            for thread in threads:
                thread.join(timeout=LOAD_SECONDS + 2 * HUNG)
        assert not any(t.is_alive() for t in threads), "a request hung"

        summary = Counter((o.step, o.status, o.code) for o in outcomes)
        unclean = [o for o in outcomes if (o.status, o.code) not in CLEAN]
        assert not unclean, f"not a 200 or a clean 503: {summary}\n{gateway.output()[-4000:]}"
        recovered = [o for o in outcomes if o.started > restarted and o.status == 200]
        assert recovered, f"no request succeeded after the restart: {summary}"
        with httpx.Client(timeout=HUNG) as client:
            last = one_request(client, gateway.url, key, -1)
        assert last.status == 200, last

        # Held reservations of requests that failed after their lock expire; nothing else is
        # left live (settlement retried through the restart instead of leaving units in flight).
        wait_until(
            lambda: stacks(db)[stack_ids[EMBED]].reserved_units == 0,
            LOCK_TIMEOUT + 15,
            "expiry of the reservations of failed requests",
        )
        assert reconcile(db) == []
        charged = sum(o.charged for o in outcomes) + last.charged
        assert stacks(db)[stack_ids[EMBED]].used_units == charged, summary
