"""Login (device authorization grant) and token storage."""
