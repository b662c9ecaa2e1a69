"""Directories the CLI is told to use are never chmod-ed: a private one of our own is made
inside a shared one, and what cannot be made safe is refused with a hint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dbaccess.client.auth.token_store import StoredLogin, save_login
from dbaccess.client.config import Profile, ProfileFile, config_dir, runtime_dir
from dbaccess.client.session.directory import SessionDir, stale_sessions
from dbaccess.errors import ConfigError

OWN = f"dbaccess-{os.geteuid()}"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def directory(path: Path, permissions: int) -> Path:
    path.mkdir()
    path.chmod(permissions)
    return path


def test_a_missing_runtime_dir_is_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(tmp_path / "a" / "b"))
    assert runtime_dir() == tmp_path / "a" / "b"
    assert mode(tmp_path / "a" / "b") == 0o700
    assert mode(tmp_path / "a") == 0o700


def test_a_private_runtime_dir_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = directory(tmp_path / "mine", 0o700)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(mine))
    assert runtime_dir() == mine


@pytest.mark.parametrize("permissions", [0o755, 0o750, 0o1777])
def test_a_shared_runtime_dir_keeps_its_mode_and_gets_a_private_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permissions: int
) -> None:
    shared = directory(tmp_path / "shared", permissions)  # a home, a group dir, a /tmp
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(shared))
    used = runtime_dir()
    assert used == shared / OWN
    assert mode(shared) == permissions  # never chmod-ed
    assert mode(used) == 0o700
    assert runtime_dir() == used  # the next run finds the same place


def test_sessions_are_created_and_swept_in_the_same_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o755)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(shared))
    session = SessionDir.create("s-1", broker="http://b", profile="default")
    assert session.path.parent == shared / OWN
    assert mode(session.path) == 0o700
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    owner = json.loads((session.path / "owner.json").read_text())
    (session.path / "owner.json").write_text(json.dumps({**owner, "pid": int(dead)}))
    assert [(d.path, o["session"]) for d, o in stale_sessions()] == [(session.path, "s-1")]


def test_a_planted_subdirectory_is_refused_not_chmod_ed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o1777)
    planted = directory(shared / OWN, 0o755)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(shared))
    with pytest.raises(ConfigError) as caught:
        runtime_dir()
    assert "is open to other users (mode 0755)" in caught.value.message
    assert "DBACCESS_RUNTIME_DIR" in (caught.value.hint or "")
    assert mode(planted) == 0o755


def test_a_symlink_in_place_of_the_subdirectory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o1777)
    elsewhere = directory(tmp_path / "elsewhere", 0o700)
    (shared / OWN).symlink_to(elsewhere)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(shared))
    with pytest.raises(ConfigError, match="is not a plain directory"):
        runtime_dir()


def test_a_directory_others_may_rename_things_in_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_dir = directory(tmp_path / "open", 0o777)  # no sticky bit
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(open_dir / "runtime"))
    with pytest.raises(ConfigError, match=r"other users may rename .* \(mode 0777, no sticky"):
        runtime_dir()
    assert mode(open_dir) == 0o777


def test_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="is not a directory"):
        runtime_dir()


def test_a_symlink_the_user_names_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = directory(tmp_path / "real", 0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(tmp_path / "link"))
    assert runtime_dir() == real


def test_a_shared_config_dir_keeps_its_mode_and_profiles_go_to_our_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o1777)
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(shared))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "https://broker.example")
    profiles.save()
    assert (shared / OWN / "config.toml").exists()
    assert not (shared / "config.toml").exists()
    assert mode(shared) == 0o1777
    assert ProfileFile.load().profiles["default"].broker == "https://broker.example"


def test_a_readable_config_dir_of_ours_is_used_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ~/.config/dbaccess is usually 0755: config.toml is no secret, only others' writes matter
    mine = directory(tmp_path / "config", 0o755)
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(mine))
    assert config_dir() == mine
    assert mode(mine) == 0o755


def login() -> StoredLogin:
    return StoredLogin(
        issuer="https://idp",
        client_id="c",
        scopes=["openid"],
        id_token="t",
        refresh_token=None,
        expires_at=0.0,
        subject="alice",
    )


def test_the_token_file_directory_is_created_private_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = directory(tmp_path / "config", 0o755)
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(mine))
    profiles = ProfileFile.load()
    profiles.profiles["default"] = Profile("default", "https://b", insecure_storage=True)
    profiles.save()
    save_login("default", login())
    assert mode(mine / "tokens") == 0o700
    assert mode(mine / "tokens" / "default.json") == 0o600
    (mine / "tokens").chmod(0o755)  # say, restored from a backup
    with pytest.raises(ConfigError, match=r"tokens is open to other users \(mode 0755\)"):
        save_login("default", login())
    assert mode(mine / "tokens") == 0o755


def test_group_write_of_the_users_private_group_is_not_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """umask 002 systems (a group per user) make ~/.config/dbaccess 0775: still ours."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid())
    monkeypatch.setattr(
        grp,
        "getgrgid",
        lambda gid: grp.struct_group(
            (me.pw_name, "x", gid, [] if gid == me.pw_gid else ["mallory"])
        ),
    )
    mine = directory(tmp_path / "config", 0o775)
    os.chown(mine, -1, me.pw_gid)
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(mine))
    assert config_dir() == mine  # the profiles a umask-002 user already has are found
    monkeypatch.setattr(
        grp, "getgrgid", lambda gid: grp.struct_group((me.pw_name, "x", gid, ["mallory"]))
    )
    with pytest.raises(ConfigError, match=r"other users may rename .* \(mode 0775"):
        config_dir()  # a group with someone else in it could replace config.toml
    assert mode(mine) == 0o775


def test_profiles_left_in_a_shared_config_dir_are_not_read_nor_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o1777)
    (shared / "config.toml").write_text('[profiles.default]\nbroker = "https://evil"\n')
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(shared))
    with pytest.raises(ConfigError) as caught:
        ProfileFile.load()
    assert "other users can write to" in caught.value.message
    assert f"mv {shared / 'config.toml'} {shared / OWN}/" in (caught.value.hint or "")
    (shared / "config.toml").rename(shared / OWN / "config.toml")  # as the hint says
    assert ProfileFile.load().profiles["default"].broker == "https://evil"


NOBODY = 65534  # the account ids tests can hand things to; as root, lchown just works


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a symlink to another user")
def test_a_symlink_another_user_planted_on_the_way_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As /tmp/runtime-UID would be, planted by someone else when XDG_RUNTIME_DIR is unset.
    target = directory(tmp_path / "victims-ssh", 0o700)
    planted = tmp_path / "runtime-1000"
    planted.symlink_to(target)
    os.lchown(planted, NOBODY, NOBODY)
    monkeypatch.setenv("DBACCESS_RUNTIME_DIR", str(planted / "dbaccess"))
    with pytest.raises(ConfigError, match="symlink of another user's"):
        runtime_dir()
    assert list(target.iterdir()) == []
    # the same link, made by the user themselves, is theirs to follow
    os.lchown(planted, os.geteuid(), os.getegid())
    assert runtime_dir() == target / "dbaccess"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave a file of another user")
def test_another_users_config_toml_in_a_shared_dir_stops_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = directory(tmp_path / "shared", 0o1777)
    stray = shared / "config.toml"
    stray.write_text('[profiles.default]\nbroker = "https://attacker.example.com"\n')
    os.chown(stray, NOBODY, NOBODY)
    monkeypatch.setenv("DBACCESS_CONFIG_DIR", str(shared))
    assert config_dir() == shared / OWN
    assert ProfileFile.load().profiles == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave a file of another user")
def test_completion_names_are_kept_in_a_directory_of_our_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.client.name_cache import read_names, remember_targets

    class Allowed:
        target, role, engine = "demo", "readonly", "postgres"

    shared = directory(tmp_path / "shared", 0o1777)
    planted = shared / "names-default.json"
    planted.write_text(json.dumps({"version": 1, "targets": {"evil": ["x"]}}))
    os.chown(planted, NOBODY, NOBODY)
    monkeypatch.setenv("DBACCESS_CACHE_DIR", str(shared))
    assert read_names("default") == {}  # what another user left is not offered
    remember_targets("default", [Allowed()])
    assert read_names("default")["targets"] == {"demo": ["readonly"]}
    assert mode(shared) == 0o1777 and mode(shared / OWN) == 0o700
    assert mode(shared / OWN / "names-default.json") == 0o600


def test_a_fallback_runtime_dir_planted_by_another_user_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # without XDG_RUNTIME_DIR (ssh without pam_systemd, cron), platformdirs falls back to
    # /tmp/runtime-UID and raises PermissionError when another user made it first (as
    # root here, that cannot be staged with a real directory: its refusal is replayed)
    import platformdirs

    def planted(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", "/tmp/runtime-1000")

    monkeypatch.delenv("DBACCESS_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(platformdirs, "user_runtime_dir", planted)
    with pytest.raises(ConfigError) as refused:
        runtime_dir()
    assert "/tmp/runtime-1000" in refused.value.message
    assert "DBACCESS_RUNTIME_DIR" in (refused.value.hint or "")
