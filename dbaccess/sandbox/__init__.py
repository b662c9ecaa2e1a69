"""Local sandbox: private PostgreSQL, MariaDB and OpenID Connect provider processes.

Used by the test suite and by ``python -m dbaccess.sandbox`` (the README's Quick start).
Every server listens on 127.0.0.1 only, lives in a temporary directory, and is torn down
by ``stop()``. When run as root, servers run as their Debian service users, because
``initdb``/``postgres`` refuse to run as root.
"""
