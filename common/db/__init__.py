"""PostgreSQL access: the pool and the typed query functions."""
