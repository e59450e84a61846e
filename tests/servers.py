"""Real servers on loopback for tests; the helpers live in ``tests.harness`` (shared with the
benchmarks) and are re-exported here for the tests that import them from this module."""

from __future__ import annotations

from tests.harness import ServerThread, free_port, http_ok, stop_process, wait_until

__all__ = ["ServerThread", "free_port", "http_ok", "stop_process", "wait_until"]
