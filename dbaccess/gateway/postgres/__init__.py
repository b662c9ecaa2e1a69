"""The PostgreSQL wire protocol side of the gateway."""
