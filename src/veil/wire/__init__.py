"""What travels, and all the gateway may import: envelopes, error codes, tickets and receipts,
OpenAI bodies (see docs/PROTOCOL.md). Nothing here can decrypt; that is ``veil.hazmat``."""
