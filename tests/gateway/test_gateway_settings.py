"""``[gateway]`` and ``access = "gateway"`` in the broker's configuration: errors name the
key, paths resolve next to the file, and the key and CA are read before serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbaccess.broker.settings import load_settings
from dbaccess.errors import ConfigError
from tests.broker.test_settings import GOOD, write

GATEWAY = """
[gateway]
listen = "0.0.0.0:6432"
address = "gw.example.com:6432"
tls_cert_file = "tls/gw.pem"
tls_key_file = "tls/gw.key"
key_file = "gateway.key"
"""


def gateway_config(tmp_path: Path, section: str = GATEWAY, access: str = "gateway") -> Path:
    text = GOOD.replace('database = "demo"', f'database = "demo"\naccess = "{access}"')
    return write(tmp_path, text + section)


def test_a_gateway_target_loads_with_paths_next_to_the_file(tmp_path: Path) -> None:
    settings = load_settings(gateway_config(tmp_path))
    gateway = settings.gateway
    assert gateway is not None and settings.targets["demo"].access == "gateway"
    assert gateway.listen_address == ("0.0.0.0", 6432)
    assert gateway.client_address == ("gw.example.com", 6432)
    assert gateway.tls_cert_file == (tmp_path / "tls/gw.pem").resolve()
    assert gateway.key_file == (tmp_path / "gateway.key").resolve()
    assert gateway.params == "redacted"
    assert gateway.max_sql_text == 65536  # 64 KiB characters of SQL in a record
    raised = load_settings(gateway_config(tmp_path, GATEWAY + "max_sql_text = 1048576\n"))
    assert raised.gateway is not None and raised.gateway.max_sql_text == 1048576


@pytest.mark.parametrize(
    ("section", "access", "expected"),
    [
        ("", "gateway", 'targets.demo.access: "gateway" needs a [gateway] section'),
        (GATEWAY, "proxy", "targets.demo.access: Input should be 'direct' or 'gateway'"),
        (
            GATEWAY.replace("0.0.0.0:6432", "0.0.0.0"),
            "gateway",
            "gateway.listen: '0.0.0.0' is not host:port",
        ),
        (
            GATEWAY.replace('key_file = "gateway.key"', ""),
            "gateway",
            "gateway: set exactly one of key_env or key_file (never inline)",
        ),
        (
            GATEWAY + 'key_env = "GW_KEY"\n',
            "gateway",
            "gateway: set exactly one of key_env or key_file",
        ),
        (
            GATEWAY + 'params = "all"\n',
            "gateway",
            "gateway.params: Input should be 'none', 'redacted' or 'full'",
        ),
        (
            GATEWAY + "max_sql_text = 100\n",
            "gateway",
            "gateway.max_sql_text: 100 is not between 1024 and 1048576 (characters)",
        ),
        (
            GATEWAY + 'max_sql_text = "64k"\n',
            "gateway",
            "gateway.max_sql_text: Input should be a valid integer",
        ),
        (
            GATEWAY + 'upstream_source_address = "gateway-host"\n',
            "gateway",
            "gateway.upstream_source_address: 'gateway-host' is not an IP address",
        ),
    ],
)
def test_bad_gateway_settings_name_the_key(
    tmp_path: Path, section: str, access: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(gateway_config(tmp_path, section, access))
    assert expected in raised.value.message


def test_a_mariadb_target_cannot_use_the_gateway(tmp_path: Path) -> None:
    text = GOOD.replace('engine = "postgres"', 'engine = "mariadb"').replace(
        'database = "demo"', 'database = "demo"\naccess = "gateway"'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text + GATEWAY))
    assert "targets.demo.access: the gateway does not speak mariadb yet" in raised.value.message


def test_serving_reads_the_key_and_the_ca_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "demo.pw").write_text("pw\n")
    path = gateway_config(tmp_path)
    # the certificate is missing: said at start, naming the setting
    with pytest.raises(ConfigError, match="cannot read gateway.ca_file"):
        load_settings(path, read_secrets=True)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls/gw.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    settings = load_settings(path, read_secrets=True)
    # a missing key_file is made once, private, and then read as it is
    key = tmp_path / "gateway.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert settings.gateway is not None and settings.gateway.key.read() == key.read_text().strip()
    # from the environment: unset is an error naming the variable
    env = path.read_text().replace('key_file = "gateway.key"', 'key_env = "GW_KEY"')
    path.write_text(env)
    with pytest.raises(ConfigError, match="GW_KEY"):
        load_settings(path, read_secrets=True)
    monkeypatch.setenv("GW_KEY", "k" * 40)
    assert load_settings(path, read_secrets=True).gateway is not None


def test_a_direct_target_needs_no_gateway_section(tmp_path: Path) -> None:
    settings = load_settings(gateway_config(tmp_path, "", "direct"))
    assert settings.gateway is None and settings.targets["demo"].access == "direct"


def test_role_guardrails_become_the_gateways_policy(tmp_path: Path) -> None:
    from dbaccess.gateway.guardrails import StatementClass

    rules = (
        "\n[targets.demo.roles.readonly.gateway]\n"
        'statements = ["read", "copy_out"]\nmax_rows_per_result = 500\n'
        'max_bytes_per_session = 1000000\nidle_timeout = "15m"\n'
    )
    settings = load_settings(gateway_config(tmp_path, GATEWAY + rules))
    rules_ = settings.targets["demo"].roles["readonly"].gateway
    assert rules_ is not None
    policy = rules_.policy()
    assert policy.allowed == {StatementClass.READ, StatementClass.COPY_OUT, StatementClass.SESSION}
    assert (policy.max_rows_per_result, policy.max_bytes_per_session) == (500, 1_000_000)
    assert policy.idle_timeout == 900 and policy.restricts_statements


@pytest.mark.parametrize(
    ("rules", "access", "expected"),
    [
        (
            'statements = ["read", "select"]',
            "gateway",
            "targets.demo.roles.readonly.gateway.statements: unknown statement class 'select'",
        ),
        (
            "max_rows_per_result = 0",
            "gateway",
            "targets.demo.roles.readonly.gateway.max_rows_per_result: Input should be greater",
        ),
        (
            'statements = ["read"]',
            "direct",
            "targets.demo.roles.readonly.gateway: guardrails apply through the gateway only",
        ),
    ],
)
def test_bad_guardrails_name_the_key(
    tmp_path: Path, rules: str, access: str, expected: str
) -> None:
    text = GATEWAY + f"\n[targets.demo.roles.readonly.gateway]\n{rules}\n"
    with pytest.raises(ConfigError) as raised:
        load_settings(gateway_config(tmp_path, text, access))
    assert expected in raised.value.message


def test_check_config_says_when_the_gateway_certificate_and_key_do_not_load(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from dbaccess.sandbox.tls import make_certificates

    made = make_certificates(tmp_path / "tls")
    other = make_certificates(tmp_path / "other")
    (tmp_path / "demo.pw").write_text("pw\n")
    section = GATEWAY.replace('"tls/gw.pem"', f'"{made.cert}"').replace(
        '"tls/gw.key"',
        f'"{other.key}"',  # not this certificate's key
    )
    path = gateway_config(tmp_path, section)
    check = [sys.executable, "-m", "dbaccess.broker", "check-config", "--offline", "-c", str(path)]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "gateway.tls_cert_file/tls_key_file: cannot load them" in result.stderr
    path.write_text(path.read_text().replace(str(other.key), str(made.key)))
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_gateway_targets_sslrootcert_is_read_with_the_configuration(tmp_path: Path) -> None:
    from typing import cast

    from dbaccess.broker.store import Store
    from dbaccess.gateway.store_directory import StoreDirectory
    from dbaccess.sandbox.tls import make_certificates

    path = gateway_config(tmp_path)
    path.write_text(path.read_text().replace(
        'access = "gateway"', 'access = "gateway"\nsslmode = "verify-full"\nsslrootcert = "ca.pem"'
    ))  # fmt: skip
    settings = load_settings(path)
    # the gateway starts (and a SIGHUP reloads) only with a CA it can read, not failing at
    # the first session's connection
    with pytest.raises(ConfigError, match=r"target demo: cannot read sslrootcert .*ca\.pem"):
        StoreDirectory(cast(Store, None), settings, "k" * 40)
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot read sslrootcert"):
        StoreDirectory(cast(Store, None), settings, "k" * 40)
    (tmp_path / "ca.pem").write_bytes(make_certificates(tmp_path / "certs").ca.read_bytes())
    StoreDirectory(cast(Store, None), settings, "k" * 40)
