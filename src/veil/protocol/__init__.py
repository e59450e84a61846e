"""The wire and nothing else: envelopes, suites and error codes (see PROTOCOL.md)."""
