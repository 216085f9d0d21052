"""The store: engine and sessions, the ORM models, upserts, keyset cursors, run records."""
