"""Alembic migrations of the store (applied by `appraiser.store.upgrade`)."""
