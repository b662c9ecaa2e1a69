"""The gateway: a server-side access proxy in front of the databases (docs/gateway.md).

Engine-neutral parts live here (sessions, statement records); each protocol has its own
sub-package (``postgres/``).
"""
