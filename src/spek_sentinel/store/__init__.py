"""Durable state. SQLite by default; the contract is in ``base``."""
