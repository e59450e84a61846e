"""The Alembic environment of the ledger (run by ``Ledger.open``; see ``env.py``)."""
