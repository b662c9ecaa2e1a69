"""What ``dbaccess-broker check-config`` asks each target, as the broker itself would log in:
is it bootstrapped (definer functions the provisioner may execute, group roles), do two
targets share one server's roles, can a read_only template's group role write, and do the
server's settings hold what the broker rests on. The questions, in each engine's terms,
are its ``checks`` (engines/<engine>/checks.py, the EngineChecks of engines/base.py); this
module loops over the targets and words what they find."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from dbaccess.broker.engines import checks_for
from dbaccess.broker.engines.base import LoginFailed, TargetUnreachable, first_few
from dbaccess.broker.settings import Settings, TargetSection


@dataclass(frozen=True)
class Problem:
    target: str
    message: str
    hint: str


def bootstrap_hint(name: str, config: str) -> str:
    return (
        f"dbaccess-broker bootstrap {name} --config {config} (prints the SQL to review; "
        "--apply runs it with $DBACCESS_ADMIN_DSN)"
    )


def check_target(name: str, target: TargetSection, config: str) -> Problem | None:
    """None when the broker can work with ``target``; else what is wrong and what to run."""
    hint = bootstrap_hint(name, config)
    where = f"{target.engine} {target.host}:{target.port}/{target.database}"
    try:
        password = target.provisioner.read_password()
        missing = checks_for(target.engine).missing(target, password)
    except LoginFailed as exc:
        return Problem(
            name,
            f"target '{name}' ({where}): cannot log in as {target.provisioner.user}: {exc}",
            f"if the target is not bootstrapped yet: {hint}; otherwise check the "
            "provisioner's password (bootstrap --apply sets it)",
        )
    except TargetUnreachable as exc:
        return Problem(
            name,
            f"target '{name}' ({where}): cannot connect: {exc}",
            "check targets." + name + ".host and .port, and that the server runs",
        )
    if not missing:
        return None
    return Problem(
        name,
        f"target '{name}' ({where}) is not bootstrapped: missing {', '.join(missing)}",
        hint,
    )


def shared_servers(settings: Settings) -> list[str]:
    """Warnings for targets on one server: PostgreSQL roles and MariaDB users are
    server-wide, so such targets share group roles and see each other's managed users."""
    by_server: dict[tuple[str, str, int], list[str]] = {}
    for name, target in settings.targets.items():
        by_server.setdefault((target.engine, target.host, target.port), []).append(name)
    warnings = []
    for (engine, host, port), names in sorted(by_server.items()):
        if len(names) < 2:
            continue
        listed = ", ".join(repr(n) for n in names)
        warnings.append(
            checks_for(engine).shared_server_warning(
                listed, host, port, [settings.targets[n] for n in names]
            )
        )
    return warnings


def log_server_problems(targets: dict[str, TargetSection]) -> None:
    """At broker start-up, in a thread of its own (a target that does not answer must not
    delay the start): say in the log what each engine's server_problems finds."""
    log = logging.getLogger("dbaccess.broker")
    for name, target in targets.items():
        try:
            errors, warnings = checks_for(target.engine).server_problems(target)
        except Exception as exc:  # noqa: BLE001 - the reaper reports an unreachable target
            log.warning(
                "target '%s': cannot check its server settings: %s", name, type(exc).__name__
            )
            continue
        for message in errors:
            log.error("target '%s': %s", name, message)
        for message in warnings:
            log.warning("target '%s': %s", name, message)


def server_settings(settings: Settings, config: str) -> tuple[list[Problem], list[str]]:
    """check-config's part: each target's server errors (as problems) and warnings. A
    target it cannot reach is left to check_target, which says why."""
    problems, warnings = [], []
    for name, target in settings.targets.items():
        try:
            errors, found = checks_for(target.engine).server_problems(target)
        except Exception:  # noqa: BLE001 - check_target reports the target's failure
            continue
        warnings += [f"target '{name}': {message}" for message in found]
        problems += [
            Problem(name, f"target '{name}': {message}", bootstrap_hint(name, config))
            for message in errors
        ]
    return problems, warnings


def read_only_warnings(name: str, target: TargetSection) -> list[str]:
    """A warning for each ``read_only`` template whose group role can write; nothing for
    a target with no such template. A session may lift read_only where the engine has it
    (measured in tests/broker/engines/test_session_limits.py), so what a read-only
    template's group role is granted is all that keeps its sessions from writing."""
    templates: dict[str, list[str]] = {}
    for role_name, role in sorted(target.roles.items()):
        if role.read_only:
            templates.setdefault(role.group_role, []).append(role_name)
    if not templates:
        return []
    checks = checks_for(target.engine)
    try:
        writes = checks.read_only_writes(name, target, sorted(templates))
    except Exception as exc:  # the target answered check_target a moment ago: say, go on
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return [
            f"target '{name}': could not check what the read_only templates' group "
            f"roles may write: {line}"
        ]
    warnings = []
    for group, found in writes.items():
        if not found:
            continue
        held = "; ".join(f"{kind} {first_few(objects)}" for kind, objects in found.items())
        names = " and ".join(f"'{t}'" for t in templates[group])
        warnings.append(
            f"target '{name}': role template {names} is read_only, but its group role "
            f"{group} holds {held}. {checks.read_only_caveat} so these grants are what it "
            'may do: revoke them (docs/broker.md, "What a session can change")'
        )
    return warnings


def target_warnings(name: str, target: TargetSection) -> list[str]:
    """Each engine's other warnings about a bootstrapped target (PostgreSQL: the large
    objects a revocation would unlink, or cannot reach)."""
    return checks_for(target.engine).target_warnings(name, target)


# The settings' fields that name a file holding a secret (certificates and CAs are not)
SECRET_FILE_FIELDS = frozenset(
    {
        "store_password_file",
        "metrics_token_file",
        "password_file",
        "token_file",
        "client_secret_file",
        "cookie_key_file",
        "tls_key_file",
        "key_file",
    }
)


def open_secret_files(settings: Settings) -> list[str]:
    """Warnings for secret files that others on the host can read (group or world bits),
    or that another user owns (and so can change): the cookie key forges any web session,
    the provisioner's password mints database users."""
    import stat

    from dbaccess.broker.settings import fields_named

    found = [
        (key, path)
        for key, path in fields_named(settings, SECRET_FILE_FIELDS.__contains__)
        if isinstance(path, Path)
    ]
    warnings = []
    for key, path in sorted(found):
        try:
            info = path.stat()
        except OSError:
            continue  # missing: generated at first use (0600), or the check names it
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            warnings.append(
                f"{key}: {path} is readable by others (mode {mode:04o}); chmod 600 {path}, "
                "owned by the user the broker runs as (or deliver it with systemd's "
                "LoadCredential=)"
            )
        elif info.st_uid not in (os.geteuid(), 0):
            warnings.append(
                f"{key}: {path} belongs to uid {info.st_uid}, not to the user the broker "
                "runs as: that user can change the secret"
            )
    return warnings
