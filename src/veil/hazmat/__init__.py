"""The code that can decrypt: the suites (atoma-v1 in ``v1``, veil-v3 in ``v3``, what
they share in ``common``), their key schedules and sealing.

Like pyca/cryptography's ``hazmat``, the name is the fence: the client and the node import it,
the gateway never does (``tests/test_architecture.py`` checks that in a fresh interpreter).
"""
