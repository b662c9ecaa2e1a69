"""The engines dbaccess knows: one line each. An engine is a package beside this module
with ``engine.py`` (the broker's calls: ``ENGINE``, an Engine class), ``bootstrap.py``
(``render``, the one-time SQL), ``admin.py`` (``apply_bootstrap``, ``change_own_password``)
and ``checks.py`` (what check-config asks), each a protocol of base.py. Nothing here
imports a driver: the parts are imported when used. docs/development.md, "Adding an
engine", walks through one."""

from __future__ import annotations

ENGINES: dict[str, str] = {
    "postgres": "dbaccess.broker.engines.postgres",
    "mariadb": "dbaccess.broker.engines.mariadb",
}

# The sslmode values an engine's connections honour, where not all of libpq's: a mode that
# promises TLS the driver calls do not make would connect in clear text unawares, so the
# settings refuse it. (MariaDB's calls have no TLS yet: "prefer" and below only.)
SSLMODES: dict[str, frozenset[str]] = {
    "mariadb": frozenset({"disable", "allow", "prefer"}),
}
