"""``session_objects`` of a role template: "drop" by default, and one value per group role
(the bootstrap bakes the mode into revoke_user per group role)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dbaccess.broker.engines.postgres.bootstrap import render
from dbaccess.broker.settings import TargetSection


def target(roles: dict[str, dict[str, str]]) -> TargetSection:
    return TargetSection.model_validate(
        {
            "engine": "postgres",
            "host": "db",
            "port": 5432,
            "database": "app",
            "provisioner": {"user": "prov", "password_env": "PW"},
            "roles": roles,
        }
    )


def test_drop_is_the_default() -> None:
    assert target({"ro": {"group_role": "app_ro"}}).roles["ro"].session_objects == "drop"


def test_templates_sharing_a_group_role_must_agree() -> None:
    with pytest.raises(
        ValidationError,
        match="roles.a and roles.b share group_role app_mig but not session_objects",
    ):
        target(
            {
                "a": {"group_role": "app_mig", "session_objects": "keep"},
                "b": {"group_role": "app_mig"},
            }
        )
    both = target(
        {
            "a": {"group_role": "app_mig", "session_objects": "keep"},
            "b": {"group_role": "app_mig", "session_objects": "keep"},
        }
    )
    assert {r.session_objects for r in both.roles.values()} == {"keep"}


def test_the_mode_is_baked_into_the_bootstrap_per_group_role() -> None:
    keep = render(
        "t",
        target(
            {
                "mig": {"group_role": "app_mig", "session_objects": "keep"},
                "ro": {"group_role": "app_ro"},
            }
        ),
    )
    assert "v_group COLLATE \"C\" = ANY (ARRAY['app_mig']::text[])" in keep
    drop = render("t", target({"mig": {"group_role": "app_mig"}, "ro": {"group_role": "app_ro"}}))
    assert 'v_group COLLATE "C" = ANY (ARRAY[]::text[])' in drop
    assert "REASSIGN OWNED BY %I TO dbaccess_owner" not in drop  # the old hole
