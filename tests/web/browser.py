"""The session's one headless Chromium, driven through ``driver.mjs`` (npm ``playwright-core``).

``Browser.page()`` opens a fresh tab (its own sessionStorage) whose every request is recorded;
``Page`` methods address elements by their ``data-testid``. Waits are Playwright's own, bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from itertools import count
from pathlib import Path
from typing import Any

from tests.harness import ROOT, wait_until

WEB_DIR = ROOT / "web"
DRIVER = Path(__file__).resolve().parent / "driver.mjs"
CHROMIUM = os.environ.get("VEIL_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"


class DriverError(RuntimeError):
    pass


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/web installs it)"
    if not (WEB_DIR / "node_modules" / "playwright-core").is_dir():
        return "web/node_modules is missing: run `npm ci` in web/ (.ci/web does)"
    return None


class Browser:
    def __init__(self) -> None:
        env = {**os.environ, "VEIL_WEB_DIR": str(WEB_DIR), "VEIL_CHROMIUM": CHROMIUM}
        self._proc = subprocess.Popen(
            ["node", str(DRIVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        assert self._proc.stdout is not None and self._proc.stdin is not None
        ready = self._proc.stdout.readline()
        if not ready:
            raise DriverError("the browser driver exited before it was ready")
        self.version = json.loads(ready).get("version")
        self._ids = count(1)
        self._pages = count(1)
        self._lock = threading.Lock()

    def call(self, op: str, **args: Any) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            ident = next(self._ids)
            self._proc.stdin.write(json.dumps({"id": ident, "op": op, **args}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise DriverError(f"the browser driver exited during {op}")
        answer = json.loads(line)
        assert answer["id"] == ident
        if not answer["ok"]:
            raise DriverError(f"{op}: {answer['error']}")
        return answer["value"]

    def page(self) -> Page:
        name = f"p{next(self._pages)}"
        self.call("open", page=name)
        return Page(self, name)

    def close(self) -> None:
        with contextlib.suppress(DriverError):
            self.call("quit")
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=30)


class Page:
    def __init__(self, browser: Browser, name: str) -> None:
        self._b = browser
        self.name = name

    def _call(self, op: str, **args: Any) -> Any:
        return self._b.call(op, page=self.name, **args)

    def goto(self, url: str) -> Any:
        return self._call("goto", url=url)

    def fill(self, testid: str, value: str) -> None:
        self._call("fill", testid=testid, value=value)

    def click(self, testid: str) -> None:
        self._call("click", testid=testid)

    def check(self, testid: str, checked: bool = True) -> None:
        self._call("check", testid=testid, checked=checked)

    def select(self, testid: str, value: str) -> None:
        self._call("select", testid=testid, value=value)

    def wait(self, testid: str, timeout: float = 60, state: str = "visible") -> str | None:
        result: str | None = self._call("wait", testid=testid, timeout=timeout * 1000, state=state)
        return result

    def wait_for(self, expression: str, arg: Any = None, timeout: float = 60) -> Any:
        """Poll ``expression`` (a function's source) until it returns something truthy (bounded).
        Polled from here: Playwright's own waitForFunction evaluates with eval in the page,
        which the console's Content-Security-Policy refuses."""
        seen: list[Any] = []

        def truthy() -> bool:
            seen[:] = [self.evaluate(expression, arg)]
            return bool(seen[0])

        wait_until(truthy, timeout, f"{expression!r} in the page")
        return seen[0]

    def download(self, testid: str) -> tuple[str, str]:
        """Click ``testid`` and return the downloaded file's suggested name and text."""
        got: dict[str, str] = self._call("download", testid=testid)
        return got["name"], got["text"]

    def text(self, testid: str) -> str:
        return str(self._call("text", testid=testid))

    def attr(self, testid: str, name: str) -> str | None:
        value = self._call("attr", testid=testid, name=name)
        return None if value is None else str(value)

    def count(self, testid: str) -> int:
        return int(self._call("count", testid=testid))

    def html(self) -> str:
        return str(self._call("html"))

    def evaluate(self, expression: str, arg: Any = None) -> Any:
        """Run ``expression`` (a JavaScript function's source, called with ``arg``) in the page."""
        source = "\n".join(
            line for line in expression.splitlines() if not line.lstrip().startswith("//")
        )
        return self._call("evaluate", expression=source.strip(), arg=arg)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self._call("screenshot", path=str(path))
        return path

    def requests(self) -> list[dict[str, Any]]:
        log: dict[str, Any] = self._call("log")
        requests: list[dict[str, Any]] = log["requests"]
        return requests

    def errors(self) -> list[str]:
        log: dict[str, Any] = self._call("log")
        return [*log["errors"]]

    def close(self) -> None:
        self._call("close")
