"""``dbaccess tunnel``: a local PostgreSQL listener in front of the gateway, with a stable
port, user name and secret for GUI clients while sessions come and go (docs/gateway.md)."""
