"""The store's own approval rules, below the services: one person is one approver, whether
they come back under the same subject or another one with the same email (a second account,
or a provider that names a person differently per client)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dbaccess.broker.store import Conflict, Store

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def request_of(store: Store, approvals: int = 2) -> str:
    made, _ = store.create_request(
        now=NOW,
        subject="alice-sub",
        email="Alice@Example.com",
        target="demo",
        role="readwrite",
        duration=timedelta(hours=1),
        reason="a migration",
        ticket=None,
        rule="two-leads",
        approvals_required=approvals,
        approver_groups=["leads"],
        ttl=timedelta(hours=1),
        source=None,
        user_agent=None,
    )
    return made.id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path / 'broker.db'}")
    yield made
    made.close()


def test_one_email_is_one_approver_whatever_the_subject(store: Store) -> None:
    request_id = request_of(store)
    store.approve_request(request_id, "frank-cli-sub", NOW, {}, "frank@example.com")
    with pytest.raises(Conflict, match="already approved"):
        store.approve_request(request_id, "frank-web-sub", NOW, {}, "FRANK@example.com")
    # the refused one changed nothing: still one approval, still pending
    kept = store.get_request(request_id)
    assert kept is not None and kept.state == "pending"
    assert [a["by"] for a in kept.approvals] == ["frank-cli-sub"]
    done = store.approve_request(request_id, "erin-sub", NOW, {}, "erin@example.com")
    assert done.state == "approved"


def test_the_requester_under_another_subject_is_still_the_requester(store: Store) -> None:
    request_id = request_of(store, approvals=1)
    with pytest.raises(Conflict, match="their own request"):
        store.approve_request(request_id, "alice-web-sub", NOW, {}, "alice@example.com")
    # without an email, subjects alone tell people apart (as before)
    done = store.approve_request(request_id, "frank-sub", NOW, {})
    assert done.state == "approved" and done.approvals[0].get("email") is None


def test_an_unverified_approver_email_refuses_but_is_not_kept_as_who_approved(
    store: Store,
) -> None:
    request_id = request_of(store)
    # an unverified copy of the requester's address cannot approve (a match only refuses)
    with pytest.raises(Conflict, match="their own request"):
        store.approve_request(
            request_id, "eve-sub", NOW, {}, "alice@example.com", email_verified=False
        )
    # mallory's profile says frank@: her approval does not read as frank's (its email
    # is none, the claim is kept for the checks); another approver completes it
    store.approve_request(
        request_id, "mallory-sub", NOW, {}, "frank@example.com", email_verified=False
    )
    kept = store.get_request(request_id)
    assert kept is not None and kept.approvals[0].get("email") is None
    assert kept.approvals[0]["claimed"] == "frank@example.com"
    done = store.approve_request(request_id, "erin-sub", NOW, {}, "erin@example.com")
    assert done.state == "approved"
    assert [a.get("email") for a in done.approvals] == [None, "erin@example.com"]


def test_an_unverified_email_still_refuses_one_person_approving_twice_or_their_own(
    store: Store,
) -> None:
    # two subjects whose profiles both claim frank@: the second approval is refused, as a
    # verified frank@ after an unverified one is
    request_id = request_of(store)
    store.approve_request(request_id, "frank-a", NOW, {}, "frank@example.com", email_verified=False)
    for subject, verified in (("frank-b", False), ("frank-c", True)):
        with pytest.raises(Conflict, match="already approved"):
            store.approve_request(
                request_id, subject, NOW, {}, "FRANK@example.com", email_verified=verified
            )
    # a requester whose email was unverified (none kept as who) is still refused as an
    # approver of their own request under another subject
    made, _ = store.create_request(
        now=NOW, subject="eve-a", email=None, claimed_email="eve@example.com",
        target="demo", role="readonly", duration=timedelta(hours=1), reason="r",
        ticket=None, rule="two-leads", approvals_required=1, approver_groups=["leads"],
        ttl=timedelta(hours=1), source=None, user_agent=None,
    )  # fmt: skip
    assert made.email is None
    with pytest.raises(Conflict, match="their own request"):
        store.approve_request(made.id, "eve-b", NOW, {}, "eve@example.com")
