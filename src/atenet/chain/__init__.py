"""The chain of trust: signed, encrypted, append-only logs, one per network."""
