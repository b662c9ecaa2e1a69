"""The tunnel's local secret file: private, made once, never a path of the names' choosing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dbaccess.client.config import config_dir
from dbaccess.client.tunnel.secret import local_secret, secret_path
from dbaccess.errors import ConfigError


def test_made_once_private_and_reused() -> None:
    path = secret_path("default", "vault", "readonly")
    assert path.parent == config_dir() / "tunnel"
    made = local_secret(path)
    assert len(made) >= 32 and made.isascii()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert local_secret(path) == made
    assert local_secret(secret_path("default", "vault", "readwrite")) != made


@pytest.mark.parametrize("target", ["../../etc/passwd", "a/b", ".hidden", "x" * 100, "é"])
def test_hostile_names_stay_in_the_directory(target: str) -> None:
    path = secret_path("default", target, "readonly")
    assert path.parent == config_dir() / "tunnel"
    assert "/" not in path.name and not path.name.startswith(".")


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = secret_path("default", "vault", "readonly")
    local_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="not private to you") as caught:
        local_secret(path)
    assert caught.value.hint == f"remove it (a new secret is made): rm -r {path}"


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    path = secret_path("default", "vault", "readonly")
    path.parent.mkdir(mode=0o700, parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("planted\n")
    path.symlink_to(elsewhere)
    with pytest.raises(ConfigError):
        local_secret(path)
    assert elsewhere.read_text() == "planted\n"
