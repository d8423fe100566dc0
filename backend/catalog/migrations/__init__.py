"""The catalog's Alembic migrations, run programmatically when a catalog is opened."""
