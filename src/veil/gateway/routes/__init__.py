"""The gateway's HTTP surface, one router per audience:

    confidential   POST /v1/confidential/...     sealed envelopes, forwarded untouched
    plain          GET /v1/models, POST /v1/...  OpenAI's own routes (the gateway sees plaintext)
    accounts       lock, /v1/stacks, /v1/usage   what a caller does with its own account
    admin          /admin/...                    users, limits, stacks (admin API keys only)
    operations     /health, /metrics             for operators' monitoring (not metered)

Handlers are thin: they take what ``dependencies`` resolves (the gateway on ``app.state``, the
authenticated caller, the raw body) and call one ``Gateway`` method or ledger query. Every API
router uses ``metered.MeteredRoute``, which answers errors, counts metrics and returns the
caller's rate-limit slot the same way for all of them.
"""

from fastapi import APIRouter

from veil.gateway.routes import accounts, admin, confidential, operations, plain

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    confidential.router,
    plain.router,
    accounts.router,
    admin.router,
    operations.router,
)
