"""The platform's auth endpoints: log in, who am I, users and API tokens."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chatterfix.gateway.bodies import json_object
from chatterfix.gateway.errors import APIError
from chatterfix.gateway.routing import platform_of
from chatterfix.permissions import ADMIN_PERMISSION, require, requires
from chatterfix.services.auth import AuthError, LoginThrottled


async def _json_object(request: Request, allowed: set[str]) -> dict[str, Any]:
    return await json_object(request, allowed, max_bytes=65536)


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise APIError(422, f"field {name!r} must be a non-empty string", "invalid_body")
    return value


async def login(request: Request) -> Response:
    fields = await _json_object(request, {"username", "password"})
    username, password = _text(fields, "username"), _text(fields, "password")
    client = request.client.host if request.client else ""
    try:
        issued = await platform_of(request).auth.login(username, password, client)
    except LoginThrottled as exc:
        raise APIError(
            429, str(exc), "login_throttled", headers={"Retry-After": f"{exc.retry_after:.0f}"}
        ) from None
    except AuthError as exc:
        raise APIError(401, str(exc), "invalid_credentials") from None
    return JSONResponse(issued.to_dict(), status_code=201)


async def me(request: Request) -> Response:
    return JSONResponse(require(request).to_dict())


@requires(ADMIN_PERMISSION)
async def list_users(request: Request) -> Response:
    found = await platform_of(request).auth.list_users()
    return JSONResponse({"users": [user.to_dict() for user in found]})


@requires(ADMIN_PERMISSION)
async def create_user(request: Request) -> Response:
    fields = await _json_object(
        request, {"username", "email", "full_name", "password", "roles", "is_active"}
    )
    roles = fields.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise APIError(422, "field 'roles' must be a list of role names", "invalid_body")
    try:
        user = await platform_of(request).auth.create_user(fields)
    except AuthError as exc:
        raise APIError(422, str(exc), "invalid_user") from None
    return JSONResponse(user.to_dict(), status_code=201)


async def list_tokens(request: Request) -> Response:
    user = require(request)
    wanted = request.query_params.get("user_id")
    if wanted is not None and user.is_admin:
        try:
            owner: int | None = int(wanted)
        except ValueError:
            raise APIError(422, "user_id must be an integer", "invalid_query") from None
    else:
        owner = user.id
    found = await platform_of(request).auth.list_tokens(owner)
    return JSONResponse({"tokens": [token.to_dict() for token in found]})


async def create_token(request: Request) -> Response:
    user = require(request)
    fields = await _json_object(request, {"name", "expires_in", "user_id"})
    owner = fields.get("user_id", user.id)
    if owner != user.id:
        require(request, ADMIN_PERMISSION)
    expires_in = fields.get("expires_in")
    if expires_in is not None and (
        isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0
    ):
        raise APIError(422, "field 'expires_in' must be a positive number of seconds")
    if not isinstance(owner, int) or isinstance(owner, bool):
        raise APIError(422, "field 'user_id' must be an integer", "invalid_body")
    try:
        issued = await platform_of(request).auth.create_token(
            owner, str(fields.get("name", "")), expires_in=expires_in
        )
    except AuthError as exc:
        raise APIError(404, str(exc), "user_not_found") from None
    return JSONResponse(issued.to_dict(), status_code=201)


async def revoke_token(request: Request) -> Response:
    user = require(request)
    try:
        token_id = int(request.path_params["token_id"])
    except ValueError:
        raise APIError(404, "no such token", "token_not_found") from None
    auth = platform_of(request).auth
    token = await auth.get_token(token_id)
    if token is None or (token.user_id != user.id and not user.is_admin):
        raise APIError(404, "no such token", "token_not_found")
    revoked = await auth.revoke_token(token_id)
    return JSONResponse({"id": token_id, "revoked": revoked})


AUTH_ROUTES = [
    Route("/platform/auth/login", login, methods=["POST"]),
    Route("/platform/auth/me", me, methods=["GET"]),
    Route("/platform/users", list_users, methods=["GET"]),
    Route("/platform/users", create_user, methods=["POST"]),
    Route("/platform/tokens", list_tokens, methods=["GET"]),
    Route("/platform/tokens", create_token, methods=["POST"]),
    Route("/platform/tokens/{token_id}", revoke_token, methods=["DELETE"]),
]
