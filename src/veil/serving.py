"""Running a node or gateway app: logging set up once, and a graceful stop on SIGTERM.

On SIGTERM (or Ctrl-C) the server stops accepting connections, lets the requests and streams in
flight finish, bounded by ``drain_timeout`` seconds, runs the app's shutdown (the gateway settles
and closes its ledger there), and the process exits 0. A request still running when the drain
timeout ends is cancelled: the gateway then settles it from the node's last signed receipt, as for
any client that hangs up.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from veil.logs import LogFormat, RequestIdMiddleware, configure_logging

__all__ = ["serve"]

log = logging.getLogger("veil.serving")


def _exit_cleanly(signum: int, _frame: object) -> None:
    # uvicorn re-raises the signal it caught once its graceful shutdown is over; by then every
    # request has finished or been settled, so the stop was clean.
    sys.exit(0)


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    log_format: LogFormat = "text",
    drain_timeout: float = 30.0,
) -> None:
    """Serve ``app`` with uvicorn until SIGTERM/SIGINT; returns (exit 0) after a graceful stop."""
    import uvicorn

    configure_logging(log_level, log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check is noise
    config = uvicorn.Config(
        RequestIdMiddleware(app),
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,  # configure_logging did it
        access_log=False,  # RequestIdMiddleware writes the access records
        timeout_graceful_shutdown=max(1, round(drain_timeout)),  # uvicorn takes whole seconds
        lifespan="on",
    )
    signal.signal(signal.SIGTERM, _exit_cleanly)
    signal.signal(signal.SIGINT, _exit_cleanly)
    uvicorn.Server(config).run()
