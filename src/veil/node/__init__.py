"""The trusted side: keyring, pipeline (the only place plaintext exists) and the node app."""
