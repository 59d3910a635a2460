"""Bearer-token authentication: a pure-ASGI layer in front of every route.

A request carrying ``Authorization: Bearer cfx_...`` is authenticated here: a valid token
puts its user in ``request.state.user`` (see :func:`chatterfix.permissions.current_user`),
an invalid one is answered with a JSON 401 before any route runs. Requests without a token
pass untouched (routes that need a user say so with :func:`chatterfix.requires`), and so do
bearer values that are not platform tokens, which a plugin may check itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from chatterfix.gateway.errors import error_response
from chatterfix.services.auth import TOKEN_PREFIX

if TYPE_CHECKING:
    from chatterfix.platform import Platform
    from chatterfix.services.auth import User

logger = logging.getLogger("chatterfix.auth")

_AUTHORIZATION = b"authorization"
_BEARER = b"bearer "
_PLATFORM_TOKEN = TOKEN_PREFIX.encode()


class Authentication:
    __slots__ = ("app", "platform")

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            for name, value in scope["headers"]:
                if name == _AUTHORIZATION:
                    token = _platform_token(value)
                    if token is not None and not await self._authenticate(
                        token, scope, receive, send
                    ):
                        return
                    break
        await self.app(scope, receive, send)

    async def _authenticate(self, token: str, scope: Scope, receive: Receive, send: Send) -> bool:
        try:
            user: User | None = await self.platform.auth.verify_token(token)
        except Exception:
            logger.exception("token verification failed")
            await _refuse(scope, receive, send, 503, "the auth service is unavailable", None)
            return False
        if user is None:
            await _refuse(
                scope,
                receive,
                send,
                401,
                "invalid, expired or revoked API token",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
            return False
        scope.setdefault("state", {})["user"] = user
        return True


def _platform_token(header: bytes) -> str | None:
    if header[:7].lower() != _BEARER:
        return None
    token = header[7:].strip()
    return token.decode("latin-1") if token.startswith(_PLATFORM_TOKEN) else None


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    message: str,
    headers: dict[str, str] | None,
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message})
        return
    code = "invalid_token" if status == 401 else "auth_unavailable"
    await error_response(status, message, code, headers)(scope, receive, send)
