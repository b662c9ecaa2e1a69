"""Alembic migrations of the broker's store (SQLite or PostgreSQL)."""
