"""The untrusted side of Veil: API keys, the stacks ledger, node selection and forwarding.

Nothing in this package may import anything that can decrypt (``veil.node``, ``veil.hazmat.v1``
and the other suites): the gateway meters and routes sealed envelopes and never sees plaintext.
"""
