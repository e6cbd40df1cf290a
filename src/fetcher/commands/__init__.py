"""The `fetcher` commands, one module per kind: what reads the database, what writes it."""
