"""The PostgreSQL store's schema: NNNN_name.sql, applied in order (engine.store.postgres_db)."""
