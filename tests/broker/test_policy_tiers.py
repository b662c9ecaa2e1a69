"""Approval tiers by what the session may do (issue 15, point 2): within one rule, more
approvals for a DDL-capable role than for a read-only one, and for longer sessions; the
request lands in the matching tier that asks the most, and says which."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import AccessRequest, decide
from dbaccess.broker.settings import Rule

PROD = Rule.model_validate(
    {
        "name": "prod",
        "groups": ["dev"],
        "targets": ["prod"],
        "roles": ["readonly", "readwrite", "ddl"],
        "max_duration": "8h",
        "approver_groups": ["leads"],
        "tiers": [
            {"name": "writes", "roles": ["readwrite"], "approvals": 1},
            {"name": "schema", "roles": ["ddl"], "approvals": 2, "approver_groups": ["dba"]},
            {"name": "long", "longer_than": "2h", "approvals": 1},
        ],
    }
)


def alice() -> Principal:
    return Principal("sub-alice", "alice@example.com", "Alice", frozenset({"dev"}))


def ask(role: str, hours: float | None = None) -> tuple[int, tuple[str, ...], str | None, str]:
    duration = None if hours is None else timedelta(hours=hours)
    decision = decide(alice(), AccessRequest("prod", role, duration, "why"), [PROD])
    assert decision.allowed, decision.explanation
    return (
        decision.approvals_required,
        decision.approver_groups,
        decision.tier,
        decision.explanation,
    )


def test_each_role_lands_in_its_tier() -> None:
    assert ask("readonly") == (0, ("leads",), None, "granted by rule 'prod'")
    approvals, groups, tier, explanation = ask("readwrite")
    assert (approvals, groups, tier) == (1, ("leads",), "writes")
    assert (
        explanation == "granted by rule 'prod', tier 'writes' once approved by 1 member(s) of leads"
    )
    approvals, groups, tier, _ = ask("ddl")
    assert (approvals, groups, tier) == (2, ("dba",), "schema")  # the tier's own approvers


def test_a_longer_session_lands_in_the_duration_tier() -> None:
    assert ask("readonly", 2)[:3] == (0, ("leads",), None)  # up to 2h: none
    assert ask("readonly", 3)[:3] == (1, ("leads",), "long")
    # the highest matching tier wins: DDL for 3h still needs the DBA's two
    assert ask("ddl", 3)[:3] == (2, ("dba",), "schema")


@pytest.mark.parametrize(
    ("tier", "message"),
    [
        ({"name": "t", "approvals": 1}, "names no roles and no longer_than"),
        (
            {"name": "t", "roles": ["admin"], "approvals": 1},
            r"role\(s\) the rule does not grant: admin",
        ),
        ({"name": "t", "longer_than": "8h", "approvals": 1}, "not shorter than the rule's max"),
        ({"name": "t", "roles": ["ro"], "approvals": 9}, "less than or equal to 5"),
    ],
)
def test_a_tier_that_cannot_work_is_a_config_error(tier: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Rule.model_validate(
            {"name": "r", "groups": ["g"], "targets": ["t"], "roles": ["ro"],
             "max_duration": "8h", "approver_groups": ["leads"], "tiers": [tier]}
        )  # fmt: skip


def test_a_tier_with_approvals_needs_approvers() -> None:
    with pytest.raises(ValidationError, match="tier 't' needs approver_groups"):
        Rule.model_validate(
            {"name": "r", "groups": ["g"], "targets": ["t"], "roles": ["ro"],
             "max_duration": "8h", "tiers": [{"name": "t", "roles": ["ro"], "approvals": 1}]}
        )  # fmt: skip


def test_a_rule_whose_tiers_ask_approvals_may_need_them() -> None:
    assert PROD.may_need_approval("readwrite") and PROD.may_need_approval("readonly")  # long
    calm = Rule.model_validate(
        {"name": "r", "groups": ["g"], "targets": ["t"], "roles": ["ro", "rw"],
         "max_duration": "8h", "approver_groups": ["leads"],
         "tiers": [{"name": "w", "roles": ["rw"], "approvals": 1}]}
    )  # fmt: skip
    assert calm.may_need_approval("rw") and not calm.may_need_approval("ro")
