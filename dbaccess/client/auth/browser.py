"""Open the verification page in a browser — only where a graphical one can exist.

On Linux without DISPLAY/WAYLAND_DISPLAY (SSH, containers) the stdlib would fall back to
a text browser such as lynx and take over the terminal, so we do not try at all there.
"""

from __future__ import annotations

import os
import sys


def graphical_session() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(url: str) -> bool:
    """True if a browser was asked to open ``url``."""
    if not graphical_session():
        return False
    import webbrowser

    try:
        return webbrowser.open(url, new=2)
    except webbrowser.Error:
        return False
