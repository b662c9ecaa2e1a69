"""Column types as the migrations knew them, frozen: a migration must build the same
schema whatever the store's code makes of its types later. The store's ``UTCDateTime``
only converts values on their way in and out; its column is a plain DATETIME, and that is
all a migration creates (tests/broker/store/test_migrations.py compares the result with the
code's schema)."""

from __future__ import annotations

import sqlalchemy as sa

UTCDateTime = sa.DateTime
