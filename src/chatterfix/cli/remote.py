"""Calls from the command line to a running gateway's API."""

from __future__ import annotations

from typing import Any

import click


class GatewayRefused(click.ClickException):
    """The gateway answered with an error status; ``status`` and ``message`` say which."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url} answered {status}: {message}")
        self.status = status
        self.reason = message


def ask_gateway(
    url: str, method: str, path: str, *, token: str | None = None, body: Any = None
) -> dict[str, Any]:
    """Call the gateway's API with ``token`` (when given); failures become one clear
    message, never a traceback."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=60
        )
    except httpx.TransportError as exc:
        raise click.ClickException(
            f"no gateway answers at {url} ({exc}); is `chatterfix start` running?"
        ) from None
    try:
        data: dict[str, Any] = response.json()
    except ValueError:
        data = {}
    if response.status_code >= 400:
        message = data.get("error", {}).get("message") if data else response.text[:200]
        raise GatewayRefused(url, response.status_code, str(message))
    return data
