"""The approval pages in a real browser: Debian's headless Chromium through Selenium, at a
phone's size, against the suite's running broker and identity provider. An approver
opens the link from the webhook message, signs in at the provider's own pages, and
approves; another denies with a reason; a reviewer closes a break-glass review. Each
page fits the phone's width and the browser reports no Content-Security-Policy
violation (the pages need nothing the policy forbids).

With DBACCESS_WEB_SCREENSHOTS=DIR the pages are also saved there (docs/img/ holds the
ones the docs show)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbaccess.sandbox.idp import device_tokens
from dbaccess.sandbox.stack import Stack

pytestmark = pytest.mark.integration

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as shows  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PHONE = {"width": 390, "height": 844, "pixelRatio": 2}
# where the pages are saved too, read before any test changes the working directory
SCREENSHOTS = os.environ.get("DBACCESS_WEB_SCREENSHOTS")
SCREENSHOTS_DIR = Path(SCREENSHOTS).absolute() if SCREENSHOTS else None
HOSTILE = "<script>alert('x')</script> \"quoted\" & <img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the suite may run as root
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def bearer(stack: Stack, login: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {device_tokens(stack.idp, login)['id_token']}"}


@pytest.fixture
def ask(stack: Stack) -> Iterator[Callable[..., str]]:
    """Open an approval request as ``login``; withdrawn at the end (an open one would be
    what that person's next request on the shared broker gets back)."""
    made: list[tuple[str, str]] = []

    def open_request(login: str, reason: str, target: str = "demo") -> str:
        answer = httpx.post(
            stack.broker_url + "/v1/sessions",
            headers=bearer(stack, login),
            json={"target": target, "role": "readwrite", "reason": reason},
        )
        assert answer.status_code == 202, answer.text
        made.append((login, str(answer.json()["id"])))
        return made[-1][1]

    yield open_request
    for login, request_id in made:  # a denied one is over already: its 409 is fine
        httpx.post(
            f"{stack.broker_url}/v1/requests/{request_id}/withdraw", headers=bearer(stack, login)
        )


def sign_in_at_provider(driver: Any, login: str) -> None:
    """The provider's login page, then its consent page, as a person fills them in; then
    the browser is back at the broker."""
    driver.find_element(By.NAME, "login").send_keys(login)
    driver.find_element(By.NAME, "password").send_keys("any password")
    press(driver, driver.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    press(driver, wait(driver).until(shows.element_to_be_clickable(CONTINUE)))
    wait(driver).until(lambda d: "/oidc/" not in d.current_url)


CONTINUE = (By.XPATH, "//button[normalize-space()='Continue']")


def wait(driver: Any) -> Any:
    return WebDriverWait(driver, 15)


def press(driver: Any, button: Any) -> None:
    """Click a form's button and wait for the page it leads to."""
    button.click()
    wait(driver).until(lambda _d: gone(button))


def gone(element: Any) -> bool:
    """The element's page has been left. Chromium says so as a stale element, or, when
    asked in the middle of the navigation, as "Node with given id does not belong to the
    document" (an inspector error, not StaleElementReferenceException)."""
    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def button(driver: Any, label: str, within: Any = None) -> Any:
    return (within or driver).find_element(By.XPATH, f".//button[normalize-space()='{label}']")


def as_someone_else(driver: Any) -> None:
    """A fresh browser: no broker session and no provider session."""
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})


def fits_the_phone(driver: Any) -> None:
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"


def no_policy_violations(driver: Any) -> None:
    """The browser's console: nothing on our pages was refused by the CSP (the provider's
    own pages, not ours, load a web font the machine cannot reach; those are not ours)."""
    ours = [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    assert ours == []


def keep(driver: Any, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if SCREENSHOTS_DIR is not None:
        shutil.copy(tmp_path / name, SCREENSHOTS_DIR / name)


def text(driver: Any, term: str) -> str:
    """The value next to ``term`` in the request's details."""
    return str(
        driver.find_element(By.XPATH, f"//dt[text()='{term}']/following-sibling::dd[1]").text
    )


def test_an_approver_opens_the_webhook_link_signs_in_and_approves_on_a_phone(
    browser: Any, stack: Stack, tmp_path: Path, ask: Callable[..., str]
) -> None:
    request_id = ask("alice", HOSTILE)
    event = stack.webhooks.wait_for(
        lambda e: e.get("event") == "request.created" and e.get("request_id") == request_id
    )
    link = event["link"]
    assert link == f"{stack.broker_url}/web/requests/{request_id}"
    assert link in event["text"]

    browser.get(link)  # not signed in: the provider's login page
    assert browser.current_url.startswith(stack.idp.issuer)
    sign_in_at_provider(browser, "frank")

    assert browser.current_url == link  # back at the page the link named
    assert browser.find_element(By.CSS_SELECTOR, "header .who").text == "frank@example.com"
    assert text(browser, "Who") == "alice@example.com"
    assert text(browser, "What") == "readwrite on demo"
    assert text(browser, "Why") == HOSTILE  # shown as text: no script ran, no alert is open
    assert text(browser, "Duration") == "1h"
    assert text(browser, "Approvals") == "0 of 2 from leads"
    fits_the_phone(browser)
    keep(browser, tmp_path, "web-request.png")

    press(browser, button(browser, "Approve"))
    assert text(browser, "Approvals") == "1 of 2 from leads"
    assert text(browser, "State") == "pending"
    # Once is enough: the page says so instead of offering the button again.
    assert not browser.find_elements(By.XPATH, "//button[normalize-space()='Approve']")
    assert browser.find_element(By.CSS_SELECTOR, "p.approved").text == "You approved this request."
    seen = httpx.get(
        f"{stack.broker_url}/v1/requests/{request_id}", headers=bearer(stack, "erin")
    ).json()
    assert [a["by"] for a in seen["approvals"]] == ["frank"]

    # The second lead, in a browser of their own, approves: the request is approved.
    as_someone_else(browser)
    browser.get(link)
    sign_in_at_provider(browser, "erin")
    press(browser, button(browser, "Approve"))
    assert text(browser, "State") == "approved"
    fits_the_phone(browser)
    no_policy_violations(browser)

    # Signing out ends the broker's session: the page asks for a sign-in again.
    press(browser, button(browser, "Sign out"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Signed out"
    browser.get(link)
    assert browser.current_url.startswith(stack.idp.issuer)  # no session: the sign-in again


def test_a_lead_denies_with_a_reason_and_the_requester_cannot_approve_their_own(
    browser: Any, stack: Stack, ask: Callable[..., str]
) -> None:
    own = ask("erin", "my own request")
    other = ask("alice", "a bulk update", "shop")

    browser.get(f"{stack.broker_url}/web/requests/{own}")
    sign_in_at_provider(browser, "erin")
    assert text(browser, "Who") == "erin@example.com"
    assert not browser.find_elements(By.CSS_SELECTOR, "p.approved")
    assert not browser.find_elements(
        By.XPATH, "//button[normalize-space()='Approve']"
    )  # no self-approval

    browser.get(f"{stack.broker_url}/web/")
    listed = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "ul a")]
    assert f"{stack.broker_url}/web/requests/{other}" in listed
    assert f"{stack.broker_url}/web/requests/{own}" not in listed
    browser.get(f"{stack.broker_url}/web/requests/{other}")
    browser.find_element(By.ID, "reason").send_keys("not during the freeze " + HOSTILE)
    press(browser, button(browser, "Deny"))
    assert text(browser, "State") == "denied"
    assert text(browser, "Denied") == f"erin: not during the freeze {HOSTILE}"
    fits_the_phone(browser)
    no_policy_violations(browser)
    seen = httpx.get(
        f"{stack.broker_url}/v1/requests/{other}", headers=bearer(stack, "frank")
    ).json()
    assert seen["state"] == "denied" and seen["deny_reason"] == f"not during the freeze {HOSTILE}"


def test_a_reviewer_closes_a_break_glass_review_from_the_phone(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    opened = httpx.post(
        stack.broker_url + "/v1/breakglass",
        headers=bearer(stack, "carol"),
        json={"target": "demo", "incident": "INC-4711", "reason": "orders stuck: " + HOSTILE},
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()["id"]
    event = stack.webhooks.wait_for(
        lambda e: e.get("event") == "breakglass.opened" and e.get("session_id") == session
    )
    assert event["review_link"] == f"{stack.broker_url}/web/reviews/"
    httpx.delete(f"{stack.broker_url}/v1/sessions/{session}", headers=bearer(stack, "carol"))

    browser.get(event["review_link"])
    sign_in_at_provider(browser, "dave")
    section = browser.find_element(By.ID, f"review-{session}")
    assert "INC-4711" in section.text and f"orders stuck: {HOSTILE}" in section.text
    fits_the_phone(browser)
    keep(browser, tmp_path, "web-review.png")
    section.find_element(By.TAG_NAME, "textarea").send_keys("checked the statements: fine")
    press(browser, button(browser, "Close the review", section))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Review closed"
    no_policy_violations(browser)
    left = httpx.get(stack.broker_url + "/v1/reviews", headers=bearer(stack, "dave")).json()
    assert all(r["id"] != session for r in left)
