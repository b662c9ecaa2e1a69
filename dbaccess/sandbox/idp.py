"""The test identity provider (npm ``oidc-provider``) and a headless approver.

``OidcProvider`` runs ``tests/idp/server.mjs`` on 127.0.0.1 with the device flow and the
library's development login and consent pages. ``approve_device_code`` completes a device
code the way a person in a browser would: it fetches each page and submits its form.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx

from dbaccess.sandbox.processes import (
    ServiceError,
    end_process,
    find_binary,
    free_port,
    spawn_logged,
    wait_until,
)
from dbaccess.sandbox.tls import TestCertificates

IDP_DIR = Path(__file__).resolve().parents[2] / "tests" / "idp"


def require_installed() -> None:
    """The provider's code is in the source tree (tests/idp: server.mjs and npm's lockfile),
    not in the wheel; say how to get it before anything is started."""
    if not (IDP_DIR / "server.mjs").is_file():
        raise ServiceError(
            "the sandbox's test identity provider (tests/idp, on npm's oidc-provider) comes "
            "with the source, not with an installed package: run the sandbox from a clone "
            "of the repository or an unpacked sdist (pip download --no-deps --no-binary "
            ":all: dbaccess), after ./scripts/setup.sh there"
        )
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise ServiceError(
            f"the test identity provider is not installed in {IDP_DIR}; "
            "run: npm ci --prefix tests/idp (needs Node.js and npm)"
        )


@dataclass(frozen=True)
class IdpUser:
    login: str
    email: str
    name: str
    groups: list[str] = field(default_factory=list)
    email_verified: bool = True


# An API at the provider whose JWT access tokens have the CLI's client id as audience
# (tests/idp/server.mjs): tokens that a broker must tell from ID tokens.
TEST_API = "urn:dbaccess:test-api"

DEFAULT_USERS = [
    IdpUser("alice", "alice@example.com", "Alice Developer", ["dev"]),
    IdpUser("bob", "bob@example.com", "Bob DBA", ["dba", "dev"]),
    IdpUser("carol", "carol@example.com", "Carol On-call", ["oncall"]),
    IdpUser("mallory", "mallory@example.com", "Mallory", []),
    IdpUser("dave", "dave@example.com", "Dave Auditor", ["auditors"]),
    IdpUser("erin", "erin@example.com", "Erin Lead", ["dev", "leads"]),
    IdpUser("frank", "frank@example.com", "Frank Lead", ["leads"]),
]


class OidcProvider:
    def __init__(
        self,
        workdir: Path,
        users: list[IdpUser] | None = None,
        *,
        port: int | None = None,
        client_id: str = "dbaccess-cli",
        id_token_ttl: int = 3600,
        refresh_token_ttl: int = 86400,
        device_code_ttl: int = 600,
        tls: TestCertificates | None = None,
        path: str = "/oidc",
    ) -> None:
        self.workdir = workdir.absolute()  # servers change directory; paths must not be relative
        self.users = users if users is not None else DEFAULT_USERS
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.client_id = client_id
        self.web_client_id = "dbaccess-web"  # the broker's web pages ([web])
        self.ttl = {
            "IdToken": id_token_ttl,
            "AccessToken": id_token_ttl,
            "RefreshToken": refresh_token_ttl,
            "DeviceCode": device_code_ttl,
        }
        # https with a test CA (clients trust it through SSL_CERT_FILE), and the issuer's
        # path: Entra's look like /{tenant}/v2.0, which is what msal expects.
        self.tls = tls
        self.path = path
        self.log_path = workdir / "idp.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def version(self) -> str:
        package = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
        return str(json.loads(package.read_text())["version"])

    def start(self, timeout: float = 30) -> None:
        require_installed()
        self.workdir.mkdir(parents=True, exist_ok=True)
        node = find_binary("node")
        # Seen twice in CI on a loaded 2-core machine: node hung before listening, after
        # loading oidc-provider and before the provider was built (the second time, both
        # starts on one port hung). Each retry takes a fresh port unless one was asked for,
        # and what the kernel says about the hung node's threads goes into the log, so the
        # next hang says whether it spins or waits.
        for attempt in (1, 2, 3):
            if attempt > 1 and not self._fixed_port:
                self.port = free_port()
            config = self._write_config()
            self._process = spawn_logged(
                [node, str(IDP_DIR / "server.mjs"), str(config)], self.log_path, cwd=IDP_DIR
            )
            try:
                wait_until(self._ready, timeout=timeout, what="the OIDC provider")
                return
            except ServiceError as exc:
                if "exited" not in str(exc):
                    self._log_hang_report()
                self.stop()
                if attempt == 3 or "exited" in str(exc):
                    raise ServiceError(f"{exc}; log:\n{self.log_path.read_text()}") from None

    def _write_config(self) -> Path:
        config = self.workdir / "idp.json"
        config.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "issuer": self.issuer,
                    "client_id": self.client_id,
                    "web_client_id": self.web_client_id,
                    "ttl": self.ttl,
                    "resource": TEST_API,
                    **(
                        {"tls": {"cert": str(self.tls.cert), "key": str(self.tls.key)}}
                        if self.tls
                        else {}
                    ),
                    "users": {
                        u.login: {k: v for k, v in asdict(u).items() if k != "login"}
                        for u in self.users
                    },
                }
            )
        )
        return config

    def _log_hang_report(self) -> None:
        """Append what the kernel says about the hung node to the log: per thread, its state
        (running or sleeping), CPU seconds, and what it waits in. A hang in JavaScript or in
        OpenSSL spins (R, CPU growing); a blocked system call sleeps (S, with a wait channel)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        lines = []
        tick = os.sysconf("SC_CLK_TCK")
        for task in sorted(Path(f"/proc/{process.pid}/task").glob("*")):
            try:
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                comm = (task / "comm").read_text().strip()
                wchan = (task / "wchan").read_text().strip() or "-"
                syscall = (task / "syscall").read_text().split()[0]
            except OSError:
                continue
            cpu = (int(stat[11]) + int(stat[12])) / tick
            lines.append(
                f"  {task.name} {comm}: {stat[0]} cpu={cpu:.2f}s wchan={wchan} syscall={syscall}"
            )
        with self.log_path.open("a") as log:
            log.write("idp: no answer; node's threads:\n" + "\n".join(lines) + "\n")

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise ServiceError("the OIDC provider exited at start")
        try:
            url = self.issuer + "/.well-known/openid-configuration"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        end_process(process, timeout=10)

    def __enter__(self) -> OidcProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, label)
    inputs: list[str] = field(default_factory=list)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("action", ""), a.get("method", "get").lower()))
        elif not self.forms:
            return
        elif tag == "input" and a.get("type") in ("submit", "button"):
            self.forms[-1].buttons.append(
                (a.get("name", ""), a.get("value", ""), a.get("value", ""))
            )
        elif tag == "input" and a.get("name"):
            self.forms[-1].fields[a["name"]] = a.get("value", "")
            self.forms[-1].inputs.append(a["name"])
        elif tag == "button":
            self._button = [a.get("name", ""), a.get("value", ""), ""]

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[2] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None and self.forms:
            name, value, label = self._button
            self.forms[-1].buttons.append((name, value, label))
            self._button = None


def approve_device_code(
    verification_uri: str,
    login: str,
    *,
    user_code: str | None = None,
    deny: bool = False,
    timeout: float = 10,
) -> None:
    """Approve (or deny) a device code as ``login``, like a person at a browser would."""
    with httpx.Client(follow_redirects=True, timeout=timeout) as browser:
        page = browser.get(verification_uri)
        for step in range(12):
            parser = _Forms()
            parser.feed(page.text)
            if not parser.forms:
                break
            form = parser.forms[0]
            data = dict(form.fields)
            if "user_code" in data and not data["user_code"]:
                if step > 0:  # back at "enter a code": the flow has ended (e.g. aborted)
                    break
                if user_code is None:
                    raise ServiceError("the provider asks for the user code; pass user_code=")
                data["user_code"] = user_code
            if "login" in form.inputs:
                data["login"] = login
                data["password"] = "any password"
            if "confirm" in data or any(n == "confirm" for n, _, _ in form.buttons):
                if deny:
                    data.pop("confirm", None)
                    data["abort"] = "yes"
                else:
                    data["confirm"] = "yes"
            url = urljoin(str(page.url), form.action)
            page = browser.post(url, data=data) if form.method == "post" else browser.get(url)
        else:
            raise ServiceError("the device approval did not finish after 12 pages")
        if page.status_code >= 400:
            raise ServiceError(
                f"the provider refused the approval ({page.status_code}): "
                f"{_text_of(page.text)[:300]}"
            )
        text = _text_of(page.text).lower()
        if deny and "interrupted" not in text and "abort" not in text:
            raise ServiceError(f"the device code was not denied: {text[:300]}")
        if not deny and "success" not in text:
            raise ServiceError(f"the device code was not approved: {text[:300]}")


def sign_in_at_provider(
    authorize_url: str, login: str, *, abort: bool = False, timeout: float = 10
) -> str:
    """Sign in as ``login`` at the provider's pages, as a person at a browser would, from
    an authorization request to the redirect back to the client; returns that redirect's
    URL (with ``code`` and ``state``, or ``error``), not followed. ``abort`` gives up at
    the consent page instead."""
    with httpx.Client(timeout=timeout) as browser:
        response = browser.get(authorize_url)
        origin = str(response.url).split("/", 3)[:3]
        for _ in range(12):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if target.split("/", 3)[:3] != origin:
                    return target  # back to the client: where the browser would go now
                response = browser.get(target)
                continue
            if response.status_code >= 400:
                raise ServiceError(
                    f"the provider refused the sign-in ({response.status_code}): "
                    f"{_text_of(response.text)[:300]}"
                )
            parser = _Forms()
            parser.feed(response.text)
            if not parser.forms:
                raise ServiceError(
                    f"no form on the provider's page: {_text_of(response.text)[:300]}"
                )
            form = parser.forms[0]
            data = dict(form.fields)
            if "login" in form.inputs:
                data["login"] = login
                data["password"] = "any password"
            elif abort:
                abort_link = re.search(r'href="([^"]*/abort)"', response.text)
                if abort_link is None:
                    raise ServiceError("the provider's consent page has no abort link")
                response = browser.get(urljoin(str(response.url), abort_link.group(1)))
                continue
            response = browser.post(urljoin(str(response.url), form.action), data=data)
        raise ServiceError("the sign-in did not come back to the client after 12 pages")


class _Text(HTMLParser):
    """The visible text of a page (not its styles or scripts)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _text_of(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


def device_tokens(
    idp: OidcProvider,
    login: str,
    scope: str = "openid email profile groups",
    resource: str | None = None,
) -> dict[str, str]:
    """Tokens for ``login`` through the whole device flow, approved as a person would.
    With ``resource`` (TEST_API), the access token is a JWT for that API."""
    extra = {"resource": resource} if resource else {}
    code = httpx.post(
        idp.issuer + "/device/auth",
        data={"client_id": idp.client_id, "scope": scope, **extra},
    ).json()
    approve_device_code(code["verification_uri_complete"], login)
    tokens = httpx.post(
        idp.issuer + "/token",
        data={
            "client_id": idp.client_id,
            "device_code": code["device_code"],
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            **extra,
        },
    ).json()
    if "id_token" not in tokens:
        raise ServiceError(f"the provider issued no ID token: {tokens}")
    return {str(k): str(v) for k, v in tokens.items()}
