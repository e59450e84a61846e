"""The browser tests' fixtures: one headless Chromium per session (``browser``), the console
served alone for the vector tests (``console_url``), and a real ``veil serve`` on loopback
(``served``), started with the harness's ``veil_process`` / ``wait_healthy``.

Chromium, Node and web/node_modules missing: skipped with a warning, except under CI, where it
fails (.ci/web installs all three before the tests).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.harness import ServerThread, child_env, free_port, veil_process, wait_healthy
from tests.web.browser import Browser, Page, browser_missing
from veil.console import mount_console
from veil.engines import EmbeddedModelPaths

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    missing = browser_missing()
    if missing is not None:
        message = f"the web console was NOT tested in a browser: {missing}"
        if os.environ.get("CI"):
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    driver = Browser()
    try:
        yield driver
    finally:
        driver.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.page()
    try:
        yield tab
    finally:
        tab.close()


@pytest.fixture(scope="session")
def console_url() -> Iterator[str]:
    """The console alone on an app of its own (no gateway): what the vector tests load."""
    app = FastAPI()
    mount_console(app)
    with ServerThread(app) as server:
        yield server.url


@dataclass
class Served:
    """A running ``veil serve``: its URL, admin key, log and data directory."""

    url: str
    admin_key: str
    log: Path
    data_dir: Path

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.admin_key}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def new_user(self, name: str, units: dict[str, int], **limits: int) -> str:
        made = self.admin("POST", "/admin/users", json={"name": name, **limits})
        assert made.status_code == 201, made.text
        for model, amount in units.items():
            stack = self.admin(
                "POST", "/admin/stacks", json={"user": name, "model": model, "units": amount}
            )
            assert stack.status_code == 201, stack.text
        return str(made.json()["api_key"])


@pytest.fixture(scope="session")
def served(
    tmp_path_factory: pytest.TempPathFactory, embedded_models: EmbeddedModelPaths
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("web-serve")
    port, node_port = free_port(), free_port()
    log = tmp / "serve.log"
    data = tmp / "data"
    args = ["serve", "--port", str(port), "--node-port", str(node_port), "--data-dir", str(data)]
    with veil_process(args, log, child_env()) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        found = re.search(r"export VEIL_API_KEY=(veil_[A-Za-z0-9_-]+)", log.read_text())
        assert found, log.read_text()[-2000:]
        yield Served(url, found.group(1), log, data)


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(url)
    page.fill("api-key", key)
    page.click("sign-in")
    page.wait("prompt")
