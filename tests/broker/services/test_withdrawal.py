"""Which live sessions a reloaded configuration withdraws (``still_granted``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dbaccess.broker.services.revocation import still_granted
from dbaccess.broker.settings import Settings, load_settings
from dbaccess.broker.store import Lease
from tests.broker.test_settings import GOOD, write

NOW = datetime(2026, 12, 2, tzinfo=UTC)
BASE = Lease(
    id="l1", subject="alice", email=None, target="demo", role="readonly", engine="postgres",
    db_user="dba_alice_1", state="active", rule="dev-readonly", reason=None, ticket=None,
    created_at=NOW, expires_at=NOW, revoked_at=None, revoke_cause=None, attempts=0,
    next_attempt_at=None, last_error=None,
)  # fmt: skip
BREAKGLASS = """
[breakglass]
groups = ["oncall"]
targets = { demo = "readonly" }
max_duration = "1h"
"""


def settings_from(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        (lambda text: text, True),
        (lambda text: text.replace('name = "dev-readonly"', 'name = "renamed"'), False),
        (lambda text: text.replace('targets = ["demo"]', 'targets = ["*"]'), True),
        (lambda text: text.replace('roles = ["readonly"]', 'roles = ["*"]'), True),
        # the rule stops naming the group: the person's groups are not known here
        (lambda text: text.replace('groups = ["dev"]', 'groups = ["ops"]'), True),
    ],
)
def test_a_session_stays_while_its_rule_still_names_its_target_and_role(
    tmp_path: Path, change: object, kept: bool
) -> None:
    assert callable(change)
    assert still_granted(settings_from(tmp_path, change(GOOD)), BASE) is kept


def test_a_session_of_a_removed_role_or_target_is_withdrawn(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, GOOD)
    assert not still_granted(settings, replace(BASE, role="readwrite"))
    assert not still_granted(settings, replace(BASE, target="gone"))


def test_breakglass_follows_the_breakglass_section(tmp_path: Path) -> None:
    glass = replace(BASE, kind="breakglass", rule=None)
    assert still_granted(settings_from(tmp_path, GOOD + BREAKGLASS), glass)
    assert not still_granted(settings_from(tmp_path, GOOD), glass)
