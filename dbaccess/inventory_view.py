"""The standing-privilege inventory as people read it, from its JSON form: what
``dbaccess-broker inventory`` prints and ``dbaccess inventory`` (auditors, through the
API) prints the same way. Standard library only; every account name and role shown goes
through ``printable`` (a name is whatever the database allows)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dbaccess.text import printable

LABELS = {"finding": "FINDING", "allowed": "allowed", "provisioner": "provisioner"}


def report_lines(document: Mapping[str, Any]) -> Iterator[str]:
    """Per target: a count line, then one line per account (findings first) with its
    risks; then, when the document carries one, the difference from an earlier run."""
    accounts = list(document.get("accounts", []))
    targets = sorted({str(a["target"]) for a in accounts} | set(document.get("errors", {})))
    order = {"finding": 0, "allowed": 1, "provisioner": 2}
    for target in targets:
        mine = [a for a in accounts if a["target"] == target]
        if target in document.get("errors", {}):
            yield f"{printable(target)}: not read"
            continue
        findings = sum(1 for a in mine if a["status"] == "finding")
        yield (f"{printable(target)}: {len(mine)} standing account(s), {findings} finding(s)")
        width = max((len(printable(str(a["account"]))) for a in mine), default=0)
        for account in sorted(mine, key=lambda a: (order.get(a["status"], 3), a["account"])):
            risks = "; ".join(printable(str(r)) for r in account["risks"]) or "no risk found"
            label = LABELS.get(account["status"], str(account["status"]))
            yield f"  {label:<11} {printable(str(account['account'])):<{width}}  {risks}"
    diff = document.get("diff")
    if diff is not None:
        yield from _diff_lines(diff)


def _diff_lines(diff: Mapping[str, Any]) -> Iterator[str]:
    def name(entry: Mapping[str, Any]) -> str:
        return f"{printable(str(entry['target']))}:{printable(str(entry['account']))}"

    if not (diff["appeared"] or diff["went"] or diff["changed"]):
        yield "since the earlier inventory: no change"
        return
    yield "since the earlier inventory:"
    for entry in diff["appeared"]:
        yield f"  appeared  {name(entry)} ({entry['status']})"
    for entry in diff["went"]:
        yield f"  went      {name(entry)}"
    for change in diff["changed"]:
        before, now = change["before"], change["now"]
        was = "; ".join(str(r) for r in before.get("risks", [])) or "no risk"
        is_ = "; ".join(str(r) for r in now.get("risks", [])) or "no risk"
        yield f"  changed   {name(now)}: {printable(was)} -> {printable(is_)}"
