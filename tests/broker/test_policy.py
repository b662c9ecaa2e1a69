from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from dbaccess.broker.identity import Principal
from dbaccess.broker.policy import AccessRequest, decide
from dbaccess.broker.settings import Rule

DEV_READONLY = Rule(
    name="dev-readonly",
    groups=["dev"],
    targets=["demo"],
    roles=["readonly"],
    max_duration=timedelta(hours=1),
)
DBA_ANY = Rule(
    name="dba-all",
    groups=["dba"],
    targets=["*"],
    roles=["*"],
    max_duration=timedelta(hours=4),
    require_reason=True,
)
RULES = [DEV_READONLY, DBA_ANY]


def alice(*groups: str) -> Principal:
    return Principal("sub-alice", "alice@example.com", "Alice", frozenset(groups))


def test_grants_with_the_matching_rule_and_default_duration() -> None:
    decision = decide(alice("dev"), AccessRequest("demo", "readonly"), RULES)
    assert decision.allowed
    assert decision.rule == "dev-readonly"
    assert decision.duration == timedelta(hours=1)


def test_denies_by_default() -> None:
    decision = decide(alice("sales"), AccessRequest("demo", "readonly"), RULES)
    assert not decision.allowed
    assert decision.rule is None
    # alice() has an unverified email: the explanation names her by subject
    assert "no rule grants role 'readonly' on 'demo' to sub-alice" in decision.explanation


def test_denies_a_role_the_rule_does_not_name() -> None:
    assert not decide(alice("dev"), AccessRequest("demo", "readwrite"), RULES).allowed


def test_denies_beyond_max_duration_and_names_the_limit() -> None:
    decision = decide(alice("dev"), AccessRequest("demo", "readonly", timedelta(hours=2)), RULES)
    assert not decision.allowed
    assert "at most 1h" in decision.explanation


def test_reason_required() -> None:
    denied = decide(alice("dba"), AccessRequest("demo", "readwrite"), RULES)
    assert not denied.allowed and "requires a reason" in denied.explanation
    granted = decide(alice("dba"), AccessRequest("demo", "readwrite", reason="JIRA-1"), RULES)
    assert granted.allowed and granted.rule == "dba-all"


def test_rule_by_user_email_needs_a_verified_email() -> None:
    rule = Rule(
        name="alice-only",
        users=["alice@example.com"],
        targets=["demo"],
        roles=["readonly"],
        max_duration=timedelta(minutes=30),
    )
    verified = Principal(
        "sub-alice", "Alice@Example.COM", "Alice", frozenset(), email_verified=True
    )
    assert decide(verified, AccessRequest("demo", "readonly"), [rule]).allowed  # any case
    # anyone can put alice's address in an unverified email claim
    assert not decide(alice(), AccessRequest("demo", "readonly"), [rule]).allowed
    bob = Principal("sub-bob", "bob@example.com", None, frozenset(), email_verified=True)
    assert not decide(bob, AccessRequest("demo", "readonly"), [rule]).allowed


def test_only_a_verified_email_names_the_person_in_names_and_records() -> None:
    claimed = Principal("sub-eve", "alice@example.com", "Eve", frozenset())
    assert claimed.verified_email is None
    assert claimed.handle == "sub-eve"  # the database user's name, chat lines
    verified = Principal("sub-alice", "alice@example.com", None, frozenset(), email_verified=True)
    assert verified.verified_email == "alice@example.com"
    assert verified.handle == "alice"


def test_rule_by_subject_matches_exactly_verified_or_not() -> None:
    rule = Rule(
        name="alice-only",
        users=["sub-alice"],
        targets=["demo"],
        roles=["readonly"],
        max_duration=timedelta(minutes=30),
    )
    assert decide(alice(), AccessRequest("demo", "readonly"), [rule]).allowed
    other = Principal("SUB-ALICE", None, None, frozenset())
    assert not decide(other, AccessRequest("demo", "readonly"), [rule]).allowed
    # a subject that looks like an email is still a subject: no case folding
    by_mail = Principal("sub-x", "sub-alice", None, frozenset(), email_verified=True)
    assert not decide(by_mail, AccessRequest("demo", "readonly"), [rule]).allowed


names = st.sampled_from(["demo", "prod", "stage"])
roles = st.sampled_from(["readonly", "readwrite", "admin"])
groups = st.frozensets(st.sampled_from(["dev", "dba", "oncall", "sales"]), max_size=3)
rules = st.lists(
    st.builds(
        lambda i, g, t, r, m: Rule(
            name=f"r{i}", groups=[g], targets=[t], roles=[r], max_duration=timedelta(minutes=m)
        ),
        st.integers(0, 1000),
        st.sampled_from(["dev", "dba", "oncall"]),
        names,
        roles,
        st.integers(1, 600),
    ),
    max_size=6,
    unique_by=lambda r: r.name,
)


@given(rules, groups, names, roles, st.one_of(st.none(), st.integers(1, 1200)))
def test_never_grants_beyond_the_matching_rules_limit(
    rule_list, member_of, target, role, minutes
) -> None:
    who = Principal("s", "s@example.com", None, member_of)
    wanted = timedelta(minutes=minutes) if minutes else None
    decision = decide(who, AccessRequest(target, role, wanted), rule_list)
    if decision.allowed:
        rule = next(r for r in rule_list if r.name == decision.rule)
        assert decision.duration is not None and decision.duration <= rule.max_duration
        # a rule for one target never grants another; a group outside the rule never matches
        assert target in rule.targets and role in rule.roles
        assert set(rule.groups) & member_of
        if wanted is not None:
            assert decision.duration == wanted
    else:
        assert decision.duration is None


def test_ticket_pattern() -> None:
    rule = Rule(
        name="prod-rw",
        groups=["dba"],
        targets=["prod"],
        roles=["readwrite"],
        max_duration=timedelta(hours=1),
        ticket_pattern=r"(JIRA|INC)-\d+",
    )
    missing = decide(alice("dba"), AccessRequest("prod", "readwrite"), [rule])
    assert not missing.allowed
    assert r"requires a ticket matching (JIRA|INC)-\d+" in missing.explanation
    wrong = decide(alice("dba"), AccessRequest("prod", "readwrite", ticket="JIRA-12 x"), [rule])
    assert not wrong.allowed  # the whole ticket must match
    assert decide(alice("dba"), AccessRequest("prod", "readwrite", ticket="INC-7"), [rule]).allowed


def test_approval_tier_is_reported() -> None:
    rule = Rule(
        name="prod-rw",
        groups=["dba"],
        targets=["prod"],
        roles=["readwrite"],
        max_duration=timedelta(hours=1),
        approvals=2,
        approver_groups=["leads"],
    )
    decision = decide(alice("dba"), AccessRequest("prod", "readwrite"), [rule])
    assert decision.allowed and decision.approvals_required == 2
    assert decision.approver_groups == ("leads",)
    assert "approved by 2 member(s) of leads" in decision.explanation


@given(groups, names, roles)
def test_deny_by_default(member_of, target, role) -> None:
    who = Principal("s", "s@example.com", None, member_of)
    assert not decide(who, AccessRequest(target, role), []).allowed
