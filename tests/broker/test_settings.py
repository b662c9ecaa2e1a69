"""Broker configuration errors name the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbaccess.broker.settings import load_settings
from dbaccess.errors import ConfigError

GOOD = """
[broker]
store = "sqlite:///state/broker.db"

[identity]
issuer = "https://login.example.com/realms/acme/"
client_id = "dbaccess-cli"

[targets.demo]
engine = "postgres"
host = "127.0.0.1"
port = 5432
database = "demo"
provisioner = { user = "dbaccess_provisioner", password_file = "demo.pw" }

[targets.demo.roles.readonly]
group_role = "dbaccess_readonly"
read_only = true

[[rules]]
name = "dev-readonly"
groups = ["dev"]
targets = ["demo"]
roles = ["readonly"]
max_duration = "1h"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_good_file_loads_and_resolves_relative_paths(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.identity.issuer == "https://login.example.com/realms/acme"
    assert settings.broker.store == f"sqlite:///{tmp_path.resolve()}/state/broker.db"
    assert settings.targets["demo"].provisioner.password_file == (tmp_path / "demo.pw").resolve()
    assert settings.rules[0].max_duration.total_seconds() == 3600


def test_sslrootcert_is_relative_to_the_config_file(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD)).targets["demo"].sslrootcert is None
    text = GOOD.replace("port = 5432", 'port = 5432\nsslrootcert = "ca/demo.pem"', 1)
    settings = load_settings(write(tmp_path, text))
    assert settings.targets["demo"].sslrootcert == (tmp_path / "ca" / "demo.pem").resolve()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 5432", 'port = "five"', "targets.demo.port: Input should be a valid integer"),
        ("port = 5432", "port = 70000", "targets.demo.port: Input should be less than"),
        (
            'store = "sqlite:///state/broker.db"',
            'store = "postgresql+pg8000://b@db/x"',
            "broker.store: a PostgreSQL store goes through psycopg: postgresql+psycopg://",
        ),
        (
            "port = 5432",
            "port = 5432\ncreate_concurrency = 0",
            "targets.demo.create_concurrency: Input should be greater than or equal to 1",
        ),
        ('max_duration = "1h"', 'max_duration = "soon"', "rules.0.max_duration: 'soon' is not"),
        (
            'roles = ["readonly"]',
            'roles = ["readwrite"]',
            "rules.0.roles: target 'demo' has no role 'readwrite'",
        ),
        ('targets = ["demo"]', 'targets = ["prod"]', "rules.0.targets: unknown target 'prod'"),
        ('engine = "postgres"', 'engine = "oracle"', "targets.demo.engine: Input should be"),
        (
            'client_id = "dbaccess-cli"',
            'client_id = "dbaccess-cli"\nalgorithms = ["HS256"]',
            "identity.algorithms: only asymmetric algorithms are allowed, not HS256",
        ),
        (
            'password_file = "demo.pw"',
            'password = "hunter2"',
            "targets.demo.provisioner.password: Extra inputs are not permitted",
        ),
        (
            'password_file = "demo.pw"',
            'password_env = "A", password_file = "b"',
            "set exactly one of password_env or password_file",
        ),
        (
            'issuer = "https://login.example.com/realms/acme/"',
            'issuer = "login.example.com"',
            "identity.issuer: must be an http(s) URL",
        ),
        ('groups = ["dev"]', "", "a rule must name at least one group or user"),
        (
            'group_role = "dbaccess_readonly"',
            'group_role = "x; drop table"',
            "targets.demo.roles.readonly.group_role: String should match pattern",
        ),
        # a prefix that would make the reconciler see the bootstrap's own roles as its users
        (
            'database = "demo"',
            'database = "demo"\nusername_prefix = "dbaccess_"',
            "targets.demo.username_prefix: 'dbaccess_' is also the start of dbaccess_owner "
            "(the definer functions' owner): the broker would take it for a session user",
        ),
        (
            'database = "demo"\nprovisioner = { user = "dbaccess_provisioner"',
            'database = "demo"\nusername_prefix = "jit_"\nprovisioner = { user = "jit_broker"',
            "targets.demo.username_prefix: 'jit_' is also the start of jit_broker "
            "(the provisioner)",
        ),
        (
            'group_role = "dbaccess_readonly"',
            'group_role = "dba_readers"',
            "targets.demo.username_prefix: 'dba_' is also the start of dba_readers (a group role)",
        ),
    ],
)
def test_errors_name_file_key_and_problem(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.message.startswith(f"{path}: ")
    assert expected in caught.value.message


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[identity\n"))


def test_provisioner_password_comes_from_env_at_use_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace('password_file = "demo.pw"', 'password_env = "DEMO_PROVISIONER_PW"')
    settings = load_settings(write(tmp_path, text))
    provisioner = settings.targets["demo"].provisioner
    monkeypatch.delenv("DEMO_PROVISIONER_PW", raising=False)
    with pytest.raises(ConfigError, match="DEMO_PROVISIONER_PW"):
        provisioner.read_password()
    monkeypatch.setenv("DEMO_PROVISIONER_PW", "s3cret")
    assert provisioner.read_password() == "s3cret"


def test_the_owner_the_prefix_check_knows_is_the_bootstraps() -> None:
    from dbaccess.broker.engines.mariadb import bootstrap as mariadb_bootstrap
    from dbaccess.broker.engines.postgres import bootstrap as postgres_bootstrap
    from dbaccess.broker.settings import FUNCTIONS_OWNER

    assert postgres_bootstrap.OWNER == FUNCTIONS_OWNER
    assert mariadb_bootstrap.OWNER.split("@")[0].strip("'") == FUNCTIONS_OWNER


def test_a_prefix_may_match_roles_on_another_server(tmp_path: Path) -> None:
    other = GOOD.replace(
        "[[rules]]",
        """
[targets.far]
engine = "postgres"
host = "db2.example"
port = 5432
database = "far"
username_prefix = "far_"
provisioner = { user = "dba_broker", password_file = "far.pw" }

[targets.far.roles.readonly]
group_role = "readers_far"

[[rules]]""",
    )
    assert set(load_settings(write(tmp_path, other)).targets) == {"demo", "far"}
    clash = other.replace('host = "db2.example"', 'host = "127.0.0.1"')
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, clash))
    assert (
        "targets.demo.username_prefix: 'dba_' is also the start of dba_broker "
        "(the provisioner)" in caught.value.message
    )


ENTRA = GOOD.replace(
    'issuer = "https://login.example.com/realms/acme/"\nclient_id = "dbaccess-cli"',
    'kind = "entra"\ntenant = "contoso.onmicrosoft.com"\nclient_id = "0c5a7d3e-cli"',
)
WEB = '\n[web]\npublic_url = "https://dbaccess.example.com"\ncookie_key_file = "web.key"\n'


def test_on_entra_the_web_pages_sign_in_through_the_cli_s_app(tmp_path: Path) -> None:
    # Entra's sub differs per app registration: another app would make one person two
    # approvers (or, with no email claim, let them approve their own request)
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, ENTRA + WEB + 'client_id = "dbaccess-web"\n'))
    assert "web.client_id" in str(refused.value) and "0c5a7d3e-cli" in str(refused.value)
    same = load_settings(write(tmp_path, ENTRA + WEB + 'client_id = "0c5a7d3e-cli"\n'))
    assert same.web is not None and same.web.client_id == same.identity.client_id
    # another provider may use a client of its own
    other = load_settings(write(tmp_path, GOOD + WEB + 'client_id = "dbaccess-web"\n'))
    assert other.web is not None and other.web.client_id == "dbaccess-web"


def test_named_groups_are_every_group_list_of_the_config(tmp_path: Path) -> None:
    text = GOOD.replace(
        'groups = ["dev"]', 'groups = ["dev"]\napprovals = 1\napprover_groups = ["leads"]'
    )
    text = text.replace("[broker]\n", '[broker]\nauditor_groups = ["audit"]\n') + (
        '\n[breakglass]\ngroups = ["oncall"]\nreviewer_groups = ["security"]\n'
        'targets = { demo = "readonly" }\n'
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.named_groups() == {"dev", "leads", "audit", "oncall", "security"}


MARIADB = GOOD.replace('engine = "postgres"', 'engine = "mariadb"').replace("5432", "3306")


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_a_tls_sslmode_the_engine_cannot_honour_is_refused(tmp_path: Path, mode: str) -> None:
    # MariaDB's connections do not use TLS yet: a verify-full there would be clear text
    text = MARIADB.replace("port = 3306", f'port = 3306\nsslmode = "{mode}"', 1)
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, text))
    assert "sslmode" in str(refused.value) and "clear text" in str(refused.value)
    for allowed in ("disable", "prefer"):
        ok = MARIADB.replace("port = 3306", f'port = 3306\nsslmode = "{allowed}"', 1)
        assert load_settings(write(tmp_path, ok)).targets["demo"].sslmode == allowed
    postgres = GOOD.replace("port = 5432", f'port = 5432\nsslmode = "{mode}"', 1)
    assert load_settings(write(tmp_path, postgres)).targets["demo"].sslmode == mode
