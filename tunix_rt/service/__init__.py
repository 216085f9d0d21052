"""The HTTP service: webhook verification, deliveries and their outbox, the read API."""
