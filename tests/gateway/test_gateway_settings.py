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
