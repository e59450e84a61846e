"""The trusted side, inside the TEE. Plaintext lives only in the pipeline and the engines it drives.

- ``app``: thin ASGI app; moves bytes (reads bodies, checks tickets, sends what the pipeline made)
- ``pipeline`` with ``sealing``, ``frames``, ``streams``, ``receipts``, ``service``, ``bodies``:
  open -> check -> engine -> seal -> sign (the only modules that hold decrypted bodies and answers)
- ``replay``: the one replay cache (memory or Redis) for v3 request ids and gateway ticket ids
- ``tickets``: gateway tickets checked on the raw bytes; receipts signed
- ``keyring``: X25519 keys with rotation, the Ed25519 signing key; ``boot``: engines from settings
"""
