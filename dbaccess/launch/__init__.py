"""Launching native clients with a session's credentials, and cleaning up after them."""
