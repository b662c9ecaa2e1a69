"""Secrets are read where the configuration points, with errors that name the variable or
file (never the value), and files the broker writes are private and never half-written."""

from __future__ import annotations

import multiprocessing
import stat
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dbaccess.broker.secrets import SecretRef
from dbaccess.broker.settings import load_settings
from dbaccess.errors import ConfigError


def test_a_missing_variable_is_named_with_what_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBA_TEST_PW", raising=False)
    with pytest.raises(ConfigError) as caught:
        SecretRef("the store's password", env="DBA_TEST_PW").read()
    assert "DBA_TEST_PW (the store's password) is not set" in caught.value.message
    assert caught.value.hint == "export DBA_TEST_PW=... before starting the broker"
    monkeypatch.setenv("DBA_TEST_PW", "s3cret")
    assert SecretRef("x", env="DBA_TEST_PW").read() == "s3cret"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        SecretRef("the provisioner password of user p", file=tmp_path / "nope.pw").read()
    assert str(tmp_path / "nope.pw") in caught.value.message
    assert "No such file" in caught.value.message


def test_ensure_generates_a_private_file_once(tmp_path: Path) -> None:
    ref = SecretRef("x", file=tmp_path / "sub" / "p.pw")
    first = ref.ensure()
    assert len(first) >= 32 and ref.ensure() == first
    assert stat.S_IMODE((tmp_path / "sub" / "p.pw").stat().st_mode) == 0o600


def test_a_staged_rotation_replaces_the_file_only_when_committed(tmp_path: Path) -> None:
    ref = SecretRef("x", file=tmp_path / "p.pw")
    (tmp_path / "p.pw").write_text("old\n")
    ref.stage("new")
    assert stat.S_IMODE(ref.staged().stat().st_mode) == 0o600
    assert ref.read() == "old"  # in force until the database has the new one
    ref.commit_staged()
    assert ref.read() == "new" and not ref.staged().exists()
    ref.stage("newer")
    ref.discard_staged()
    assert ref.read() == "new" and not ref.staged().exists()


def _config(tmp_path: Path, broker: str, provisioner: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(f"""
[broker]
{broker}

[identity]
issuer = "https://idp.example.com"
client_id = "dbaccess"

[targets.demo]
engine = "postgres"
host = "127.0.0.1"
port = 5432
database = "demo"
provisioner = {provisioner}
roles = {{ readonly = {{ group_role = "demo_readonly" }} }}
""")
    return path


def test_the_store_password_file_is_relative_to_the_config_and_errors_are_clear(
    tmp_path: Path,
) -> None:
    path = _config(
        tmp_path,
        'store = "postgresql+psycopg://dbaccess@db/broker"\nstore_password_file = "store.pw"',
        '{ user = "p", password_file = "p.pw" }',
    )
    settings = load_settings(path)
    assert settings.broker.store_password_file == tmp_path / "store.pw"
    with pytest.raises(ConfigError) as caught:  # was a traceback (FileNotFoundError)
        settings.broker.store_url()
    assert "the store's password" in caught.value.message
    (tmp_path / "store.pw").write_text("pw\n")
    assert settings.broker.store_url().password == "pw"


def test_read_secrets_fails_at_load_when_a_provisioner_password_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBA_TEST_PROV", raising=False)
    path = _config(tmp_path, "", '{ user = "p", password_env = "DBA_TEST_PROV" }')
    load_settings(path)  # read only when needed
    with pytest.raises(ConfigError) as caught:
        load_settings(path, read_secrets=True)
    assert "DBA_TEST_PROV (the provisioner password of user p) is not set" in caught.value.message


def _ensure_in_a_process(path: str, start: Any) -> str:
    start.wait()
    return SecretRef("the gateway key", file=Path(path)).ensure()


def test_processes_starting_together_all_get_the_one_key_they_created(tmp_path: Path) -> None:
    for attempt in range(5):  # a race: each round is a fresh chance to lose it
        path = tmp_path / f"keys-{attempt}" / "gateway.key"
        path.parent.mkdir()
        with multiprocessing.Manager() as manager:
            start = manager.Event()
            with ProcessPoolExecutor(8, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_ensure_in_a_process, str(path), start) for _ in range(8)]
                with ThreadPoolExecutor(8) as threads:
                    ref = SecretRef("the gateway key", file=path)
                    local = [threads.submit(ref.ensure) for _ in range(8)]
                    start.set()
                    keys = {f.result(30) for f in futures} | {f.result(30) for f in local}
        assert len(keys) == 1 and len(keys.pop()) >= 32
        assert [p.name for p in path.parent.iterdir()] == ["gateway.key"]  # no temp files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_or_unreadable_key_file_is_refused_not_used(tmp_path: Path) -> None:
    empty = tmp_path / "gateway.key"
    empty.write_text("\n")
    with pytest.raises(ConfigError) as caught:
        SecretRef("the gateway key", file=empty).ensure()
    assert caught.value.message == f"{empty} (the gateway key) is empty"
    assert caught.value.hint is not None and "delete it" in caught.value.hint
    assert empty.read_text() == "\n"  # not replaced behind the operator's back
    unreadable = tmp_path / "dir.key"
    unreadable.mkdir()  # exists, cannot be read as a file (root reads any 0000 file)
    with pytest.raises(ConfigError) as caught:
        SecretRef("the gateway key", file=unreadable).ensure()
    assert f"cannot read the gateway key from {unreadable}" in caught.value.message
    assert caught.value.hint is not None and "readable" in caught.value.hint
