"""``masked`` and ``mask`` of a role template: the shape of each entry, read_only only,
expressions only for masked columns, one set per group role; globs as regexes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from dbaccess.broker.engines.postgres.bootstrap import render
from dbaccess.broker.engines.postgres.masking import part_regex
from dbaccess.broker.settings import TargetSection


def target(**roles: dict[str, Any]) -> TargetSection:
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


def test_a_masked_template_is_rendered_into_the_bootstrap() -> None:
    section = target(
        ro={"group_role": "app_ro", "read_only": True, "masked": ["public.*.ssn"],
            "mask": {"public.customers.ssn": "right(ssn, 4)"}}
    )  # fmt: skip
    sql = render("t", section)
    assert "SELECT dbaccess.apply_masks(" in sql and "right(ssn, 4)" in sql


@pytest.mark.parametrize(
    "entry", ["customers.ssn", "a.b.c.d", "public.cust omers.ssn", "public.x;drop.y", "a..b"]
)
def test_an_entry_is_schema_table_column(entry: str) -> None:
    with pytest.raises(ValidationError, match="masked"):
        target(ro={"group_role": "app_ro", "read_only": True, "masked": [entry]})


def test_masks_are_for_read_only_templates() -> None:
    with pytest.raises(ValidationError, match="masked needs read_only = true"):
        target(rw={"group_role": "app_rw", "masked": ["public.t.c"]})


def test_an_expression_needs_a_masked_column() -> None:
    with pytest.raises(ValidationError, match="no masked entry covers"):
        target(ro={"group_role": "app_ro", "read_only": True, "masked": ["public.t.c"],
                   "mask": {"public.t.d": "'x'"}})  # fmt: skip
    with pytest.raises(ValidationError, match="masked is empty"):
        target(ro={"group_role": "app_ro", "mask": {"public.t.d": "'x'"}})


def test_templates_sharing_a_group_role_agree_on_masks() -> None:
    with pytest.raises(ValidationError, match="share group_role app_ro but not masked"):
        target(
            a={"group_role": "app_ro", "read_only": True, "masked": ["public.t.c"]},
            b={"group_role": "app_ro", "read_only": True},
        )


def test_globs_become_anchored_regexes() -> None:
    assert part_regex("*_email") == "^.*_email$"
    assert re.match(part_regex("cust?mers"), "customers")
    assert not re.match(part_regex("ssn"), "ssn_old")
    assert part_regex("a$b") == "^a\\$b$"


def maria_section() -> TargetSection:
    return TargetSection.model_validate(
        {
            "engine": "mariadb",
            "host": "db",
            "port": 3306,
            "database": "shop",
            "provisioner": {"user": "prov", "password_env": "PW"},
            "roles": {"ro": {"group_role": "app_ro", "read_only": True,
                             "masked": ["shop.t.c"]}},
        }
    )  # fmt: skip


def test_a_mariadb_target_with_masks_loads_and_its_printed_bootstrap_says_apply() -> None:
    from dbaccess.broker.engines.mariadb.bootstrap import render as maria_render

    text = maria_render("t", maria_section())
    assert "Masked columns are applied by --apply only" in text


def test_an_engine_without_masking_refuses_masks_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker itself refuses it (not only the bootstrap): served, the columns would be
    readable while the configuration says they are not."""
    import dbaccess.broker.settings as settings

    monkeypatch.setattr(settings, "engine_masks_columns", lambda engine: False)
    with pytest.raises(ValidationError, match="masked columns are not applied on mariadb"):
        maria_section()
