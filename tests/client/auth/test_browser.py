import webbrowser

import pytest

from dbaccess.client.auth.browser import open_in_browser


class Recorder(webbrowser.BaseBrowser):
    opened: list[str] = []

    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        Recorder.opened.append(url)
        return True


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    Recorder.opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, new=0: Recorder("r").open(url, new))
    return Recorder.opened


def test_no_browser_without_a_display(recorder: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert open_in_browser("https://idp/device?user_code=X") is False
    assert recorder == []  # never a text browser taking over an SSH terminal


def test_browser_where_a_display_exists(
    recorder: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    assert open_in_browser("https://idp/device?user_code=X") is True
    assert recorder == ["https://idp/device?user_code=X"]
