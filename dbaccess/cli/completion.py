"""Shell completion of target, role and session names, from what the last ``dbaccess
targets`` and ``dbaccess sessions`` remembered (dbaccess/client/name_cache.py): no login and no
broker call at <TAB>."""

from __future__ import annotations

from typing import Any


def _profile(ctx: Any) -> str | None:
    # --profile (or DBACCESS_PROFILE) as click parsed it for the whole command line
    value = ctx.find_root().params.get("profile")
    return value if isinstance(value, str) else None


def complete_target(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    from dbaccess.client import name_cache

    return [
        (name, "roles: " + ", ".join(roles))
        for name, roles in sorted(name_cache.targets(_profile(ctx)).items())
        if name.startswith(incomplete)
    ]


def complete_role(ctx: Any, incomplete: str) -> list[str]:
    from dbaccess.client import name_cache

    known = name_cache.targets(_profile(ctx))
    target = ctx.params.get("target")
    roles = (
        known.get(target, [])
        if target in known
        else sorted({role for names in known.values() for role in names})
    )
    return [role for role in roles if role.startswith(incomplete)]


def complete_session(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    from dbaccess.client import name_cache

    return [
        (s["id"], f"{s.get('target', '?')} ({s.get('role', '?')})")
        for s in name_cache.sessions(_profile(ctx))
        if s["id"].startswith(incomplete)
    ]
