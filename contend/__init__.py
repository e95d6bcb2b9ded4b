"""contend: load tests and row-lock contention diagnostics for Postgres-backed job systems."""

__version__ = "0.1.0"
