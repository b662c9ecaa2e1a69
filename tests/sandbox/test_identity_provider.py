"""The test OpenID Connect provider behaves like a real one for the device flow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from dbaccess.sandbox.idp import OidcProvider, approve_device_code

pytestmark = pytest.mark.integration
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    with OidcProvider(tmp_path_factory.mktemp("idp")) as provider:
        yield provider


def start(idp: OidcProvider) -> dict[str, Any]:
    response = httpx.post(
        idp.issuer + "/device/auth",
        data={"client_id": idp.client_id, "scope": "openid profile email groups offline_access"},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def token(idp: OidcProvider, **data: str) -> dict[str, Any]:
    return dict(httpx.post(idp.issuer + "/token", data={"client_id": idp.client_id, **data}).json())


def test_discovery_names_the_issuer_and_device_endpoint(idp: OidcProvider) -> None:
    doc = httpx.get(idp.issuer + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == idp.issuer
    assert doc["device_authorization_endpoint"].startswith(idp.issuer)
    assert DEVICE_GRANT in doc["grant_types_supported"]


def test_device_code_approved_by_a_person_gives_tokens_with_groups(idp: OidcProvider) -> None:
    code = start(idp)
    assert (
        token(idp, grant_type=DEVICE_GRANT, device_code=code["device_code"])["error"]
        == "authorization_pending"
    )
    approve_device_code(code["verification_uri_complete"], "alice")
    tokens = token(idp, grant_type=DEVICE_GRANT, device_code=code["device_code"])
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["aud"] == idp.client_id
    assert claims["iss"] == idp.issuer
    assert claims["email"] == "alice@example.com"
    assert claims["groups"] == ["dev"]

    # refresh tokens rotate: the new one works, the old one is then refused
    first = tokens["refresh_token"]
    refreshed = token(idp, grant_type="refresh_token", refresh_token=first)
    assert refreshed["refresh_token"] != first
    assert "id_token" in refreshed
    assert token(idp, grant_type="refresh_token", refresh_token=first)["error"] == "invalid_grant"


def test_approval_by_typing_the_user_code(idp: OidcProvider) -> None:
    code = start(idp)
    approve_device_code(code["verification_uri"], "bob", user_code=code["user_code"])
    tokens = token(idp, grant_type=DEVICE_GRANT, device_code=code["device_code"])
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert sorted(claims["groups"]) == ["dba", "dev"]


def test_denied_device_code(idp: OidcProvider) -> None:
    code = start(idp)
    approve_device_code(code["verification_uri_complete"], "alice", deny=True)
    assert (
        token(idp, grant_type=DEVICE_GRANT, device_code=code["device_code"])["error"]
        == "access_denied"
    )


def test_missing_node_modules_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbaccess.sandbox import idp as module
    from dbaccess.sandbox.processes import ServiceError

    (tmp_path / "server.mjs").write_text("// the source is there, npm ci was not run\n")
    monkeypatch.setattr(module, "IDP_DIR", tmp_path)
    with pytest.raises(ServiceError, match="npm ci --prefix tests/idp"):
        OidcProvider(tmp_path / "w").start()


def test_a_provider_that_never_answers_is_retried_on_fresh_ports_and_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that hangs before listening (seen in CI) is started again on another port,
    and the error's log says, per start, what the kernel saw the hung threads doing."""
    import re

    from dbaccess.sandbox import idp as module
    from dbaccess.sandbox.processes import ServiceError

    (tmp_path / "node_modules" / "oidc-provider").mkdir(parents=True)
    # prints the port it was given, then waits forever without listening
    (tmp_path / "server.mjs").write_text(
        "import { readFileSync } from 'node:fs';\n"
        "console.log('port', JSON.parse(readFileSync(process.argv[2], 'utf8')).port);\n"
        "setInterval(() => {}, 1000);\n"
    )
    monkeypatch.setattr(module, "IDP_DIR", tmp_path)
    with pytest.raises(ServiceError, match="did not become ready") as caught:
        OidcProvider(tmp_path / "w").start(timeout=2)
    log = str(caught.value)
    ports = re.findall(r"^port (\d+)$", log, re.MULTILINE)
    assert len(ports) == 3 and len(set(ports)) == 3, log
    assert log.count("idp: no answer; node's threads:") == 3, log
    # the main thread waits in the event loop: sleeping, in a system call
    assert re.search(r"node: S cpu=[\d.]+s wchan=\S+ syscall=\d+", log), log


def test_the_tour_without_the_providers_source_says_where_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Installed from a wheel, the package has no tests/idp: the tour says so before it
    starts any server, and how to get the provider (a clone or the sdist)."""
    from dbaccess.sandbox import idp, tour

    monkeypatch.setattr(idp, "IDP_DIR", tmp_path / "site-packages" / "tests" / "idp")
    monkeypatch.setattr(tour, "Stack", None)  # would fail loudly if it were reached
    assert tour.main([]) == 3
    err = capsys.readouterr().err
    assert "comes with the source, not with an installed package" in err
    assert "pip download --no-deps --no-binary :all: dbaccess" in err
    assert "./scripts/setup.sh" in err
