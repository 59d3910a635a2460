"""Auth: users, roles, API tokens, the gateway's bearer tokens and permission checks.

The service tests run on SQLite and on a database of its own on the machine's PostgreSQL.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from rich.console import Console
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import chatterfix
from chatterfix import Platform, hookimpl
from chatterfix.config import Config
from chatterfix.permissions import ADMIN_PERMISSION, current_user, requires
from chatterfix.services.auth import AuthError, AuthService, LoginThrottled, api_tokens, users

pytestmark = pytest.mark.anyio


@pytest.fixture
async def platform(database_url: str) -> AsyncIterator[Platform]:
    platform = Platform(
        config={"database": {"url": database_url}}, load_entrypoints=False, builtins=False
    )
    async with platform:
        yield platform


async def test_the_seed_calls_as_written(platform: Platform) -> None:
    from chatterfix import shared_services

    user = await shared_services.auth.create_user(
        {"username": "technician1", "email": "tech@example.com", "full_name": "John Doe"}
    )
    assert user["username"] == "technician1"
    assert user.full_name == "John Doe"
    await platform.auth.create_role("technician", ["work_order.*"])
    await platform.auth.assign_role(user.id, "technician")
    issued = await platform.auth.create_token(user.id, "tablet")

    verified = await shared_services.auth.verify_token(issued.token)
    allowed = await shared_services.auth.check_permission(
        user_id=verified.id, permission="work_order.create"
    )
    denied = await shared_services.auth.check_permission(
        user_id=verified.id, permission="platform.admin"
    )
    assert verified.username == "technician1"
    assert (allowed, denied) == (True, False)
    assert await shared_services.auth.check_permission(user_id=999, permission="x") is False


async def test_tokens_and_passwords_are_never_stored_in_clear(platform: Platform) -> None:
    user = await platform.auth.create_user(username="planner", password="correct horse 1")
    issued = await platform.auth.create_token(user.id, "laptop")
    async with platform.database.engine.connect() as connection:
        token_rows = (await connection.execute(sa.select(api_tokens))).mappings().all()
        user_rows = (await connection.execute(sa.select(users))).mappings().all()
    stored = " ".join(str(value) for row in [*token_rows, *user_rows] for value in row.values())
    assert issued.token not in stored
    assert issued.token[8:] not in stored
    assert "correct horse 1" not in stored
    assert token_rows[0]["token_hash"] == hashlib.sha256(issued.token.encode()).hexdigest()
    assert user_rows[0]["password_hash"].startswith("$argon2id$")
    assert "token" not in issued.info.to_dict()


async def test_expired_revoked_and_wrong_tokens_verify_to_nobody(platform: Platform) -> None:
    user = await platform.auth.create_user(username="temp")
    expiring = await platform.auth.create_token(user.id, expires_in=0.01)
    revoked = await platform.auth.create_token(user.id)
    kept = await platform.auth.create_token(user.id)
    assert await platform.auth.verify_token(revoked.token) is not None  # now in the cache

    assert await platform.auth.revoke_token(revoked.info.id) is True
    assert await platform.auth.revoke_token(revoked.info.id) is False
    import anyio

    await anyio.sleep(0.02)
    assert await platform.auth.verify_token(expiring.token) is None
    assert await platform.auth.verify_token(revoked.token) is None
    assert await platform.auth.verify_token(kept.token[:-1] + "x") is None
    assert await platform.auth.verify_token("not-a-token") is None
    assert (await platform.auth.verify_token(kept.token)) == await platform.auth.get_user(user.id)

    listed = {info.id: info for info in await platform.auth.list_tokens(user.id)}
    assert listed[revoked.info.id].revoked_at is not None
    assert listed[kept.info.id].last_used_at is not None
    assert not listed[expiring.info.id].active

    await platform.auth.set_active(user.id, False)
    assert await platform.auth.verify_token(kept.token) is None


async def test_concurrent_and_refused_verifications_share_database_lookups(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    auth = platform.auth
    user = await auth.create_user(username="busy")
    issued = await auth.create_token(user.id)
    lookups: list[str] = []
    original = auth._lookup

    async def counted(digest: str) -> Any:
        lookups.append(digest)
        return await original(digest)

    monkeypatch.setattr(auth, "_lookup", counted)
    results: list[Any] = []

    async def verify(token: str) -> None:
        results.append(await auth.verify_token(token))

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(verify, issued.token)
    assert len(lookups) == 1
    assert {result.username for result in results} == {"busy"}

    bogus = "cfx_" + secrets.token_urlsafe(32)
    for _ in range(5):
        assert await auth.verify_token(bogus) is None
    assert len(lookups) == 2


async def test_another_replica_honours_a_revocation_after_its_cache_time(
    database_url: str,
) -> None:
    config = {"database": {"url": database_url}, "auth": {"token_cache_seconds": 0}}
    first = Platform(config=config, load_entrypoints=False, builtins=False)
    second = Platform(config=config, load_entrypoints=False, builtins=False)
    async with first, second:
        user = await first.auth.create_user(username="shared")
        issued = await first.auth.create_token(user.id)
        assert await second.auth.verify_token(issued.token) is not None
        await first.auth.revoke_token(issued.info.id)
        assert await second.auth.verify_token(issued.token) is None


async def test_bad_user_input_is_refused(platform: Platform) -> None:
    await platform.auth.create_user(username="Bob")
    with pytest.raises(AuthError, match="already exists"):
        await platform.auth.create_user(username="bob")
    with pytest.raises(AuthError, match="invalid username"):
        await platform.auth.create_user(username="x'; DROP TABLE chatterfix_users; --")
    with pytest.raises(AuthError, match="no role named 'wizard'"):
        await platform.auth.create_user(username="carol", roles=["wizard"])
    with pytest.raises(AuthError, match="at least 8 characters"):
        await platform.auth.create_user(username="dave", password="short")
    with pytest.raises(AuthError, match="unknown user field"):
        await platform.auth.create_user({"username": "erin", "is_admin": True})
    assert [user.username for user in await platform.auth.list_users()] == ["Bob"]


async def test_admin_bootstrap_happens_once(platform: Platform) -> None:
    first = await platform.auth.bootstrap_admin()
    second = await platform.auth.bootstrap_admin()
    assert first is not None and second is None
    admin = await platform.auth.verify_token(first.token)
    assert admin is not None and admin.is_admin
    assert [user.username for user in await platform.auth.list_users()] == ["admin"]


def test_first_start_prints_the_admin_token_once(tmp_path: Path) -> None:
    from chatterfix.cli.serve import bootstrap_admin

    config = Config({"platform": {"data_dir": str(tmp_path / "data")}})
    outputs = []
    for _ in range(2):
        buffer = io.StringIO()
        bootstrap_admin(config, Console(file=buffer, width=200))
        outputs.append(buffer.getvalue())
    saved = tmp_path / "data" / "cli-token"
    token = saved.read_text().strip()
    assert token.startswith("cfx_") and token in outputs[0]
    assert outputs[1] == ""
    assert saved.stat().st_mode & 0o777 == 0o600


def test_login_attempts_are_throttled() -> None:
    clock = [1000.0]
    config = Config({"auth": {"login_attempts": 3, "login_window": 60}})
    throttle = AuthService(lambda: None, config, clock=lambda: clock[0]).throttle  # type: ignore
    for _ in range(3):
        throttle.check("user:ann", "client:10.0.0.9")
        throttle.failed("user:ann", "client:10.0.0.9")
    with pytest.raises(LoginThrottled) as caught:
        throttle.check("user:ann")
    assert 59 <= caught.value.retry_after <= 60
    throttle.check("user:someone-else", "client:10.0.0.9")  # one user's lock-out only
    for number in range(9):  # a client spraying user names: four times the user limit
        throttle.failed(f"user:u{number}", "client:10.0.0.9")
    with pytest.raises(LoginThrottled):
        throttle.check("user:someone-else", "client:10.0.0.9")
    clock[0] += 61
    throttle.check("user:ann", "client:10.0.0.9")


# -- the gateway ---------------------------------------------------------------------------


@requires("work_order.create")
async def create_work_order(request: Request) -> JSONResponse:
    user = current_user(request)
    return JSONResponse({"created_by": user.username if user else None}, status_code=201)


class WorkOrders:
    PLUGIN_MANIFEST = {"name": "work_orders", "permissions": ["work_order.create"]}

    @hookimpl
    def register_routes(self, platform: Platform) -> list[Route]:
        return [Route("/api/work_orders", create_work_order, methods=["POST"])]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    platform = Platform(plugins=[WorkOrders()], load_entrypoints=False, builtins=False)
    async with platform:
        transport = httpx.ASGITransport(app=platform.asgi_app, client=("10.1.2.3", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield platform, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_for(platform: Platform, username: str, *roles: str) -> str:
    user = await platform.auth.create_user(username=username, roles=list(roles))
    return (await platform.auth.create_token(user.id)).token


async def test_management_endpoints_need_an_admin(gateway: Any) -> None:
    platform, client = gateway
    await platform.auth.create_role("technician", ["work_order.*"])
    admin = await token_for(platform, "root", "admin")
    technician = await token_for(platform, "tech", "technician")

    anonymous = await client.post("/platform/plugins/work_orders/stop")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    error = anonymous.json()["error"]
    assert error["code"] == "authentication_required"
    assert error["request_id"] == anonymous.headers["x-request-id"]

    refused = await client.post("/platform/plugins/work_orders/stop", headers=bearer(technician))
    assert refused.status_code == 403
    assert refused.json()["error"]["permission"] == ADMIN_PERMISSION
    emitted = await client.post(
        "/platform/events", json={"type": "x.y", "data": {}}, headers=bearer(technician)
    )
    assert emitted.status_code == 403
    configured = await client.put(
        "/platform/config/platform.debug", json={"value": True}, headers=bearer(technician)
    )
    assert configured.status_code == 403
    assert platform.config.get("platform.debug") is False

    allowed = await client.post("/platform/plugins/work_orders/stop", headers=bearer(admin))
    assert allowed.status_code == 200
    assert platform.plugins.get("work_orders").state.value == "stopped"
    assert (await client.get("/platform/plugins")).status_code == 200  # reading stays open


async def test_a_bad_token_is_refused_before_any_route(gateway: Any) -> None:
    platform, client = gateway
    user = await platform.auth.create_user(username="leaver")
    issued = await platform.auth.create_token(user.id)
    await platform.auth.revoke_token(issued.info.id)
    for token in [issued.token, "cfx_" + secrets.token_urlsafe(32)]:
        reply = await client.get("/health", headers=bearer(token))
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "invalid_token"
        assert "invalid_token" in reply.headers["www-authenticate"]
    # A bearer value that is not a platform token is left to the routes (a plugin's own).
    assert (await client.get("/health", headers=bearer("eyJhbGciOi.jwt.x"))).status_code == 200


async def test_routes_declare_the_permission_they_need(gateway: Any) -> None:
    platform, client = gateway
    await platform.auth.create_role("technician", ["work_order.*"])
    await platform.auth.create_role("viewer", ["work_order.read"])
    technician = await token_for(platform, "tech", "technician")
    viewer = await token_for(platform, "view", "viewer")

    assert (await client.post("/api/work_orders")).status_code == 401
    denied = await client.post("/api/work_orders", headers=bearer(viewer))
    assert denied.status_code == 403
    assert "work_order.create" in denied.json()["error"]["message"]
    created = await client.post("/api/work_orders", headers=bearer(technician))
    assert created.status_code == 201
    assert created.json() == {"created_by": "tech"}
    assert "work_order.create" in platform.permissions


async def test_login_me_and_own_tokens(gateway: Any) -> None:
    platform, client = gateway
    await platform.auth.create_user(username="ann", password="a long passphrase")
    other = await token_for(platform, "ben")

    login = await client.post(
        "/platform/auth/login", json={"username": "ann", "password": "a long passphrase"}
    )
    assert login.status_code == 201
    token = login.json()["token"]
    assert login.json()["expires_at"] is not None
    me = await client.get("/platform/auth/me", headers=bearer(token))
    assert me.json()["username"] == "ann"

    extra = await client.post(
        "/platform/tokens", json={"name": "tablet", "expires_in": 3600}, headers=bearer(token)
    )
    assert extra.status_code == 201
    mine = (await client.get("/platform/tokens", headers=bearer(token))).json()["tokens"]
    assert {entry["name"] for entry in mine} == {"login", "tablet"}
    assert all("token" not in entry for entry in mine)

    theirs = (await client.get("/platform/tokens", headers=bearer(other))).json()["tokens"]
    stolen = await client.delete(f"/platform/tokens/{mine[0]['id']}", headers=bearer(other))
    assert stolen.status_code == 404
    for_someone = await client.post(
        "/platform/tokens", json={"user_id": theirs[0]["user_id"]}, headers=bearer(token)
    )
    assert for_someone.status_code == 403

    revoked = await client.delete(f"/platform/tokens/{extra.json()['id']}", headers=bearer(token))
    assert revoked.json() == {"id": extra.json()["id"], "revoked": True}
    assert (await client.get("/health", headers=bearer(extra.json()["token"]))).status_code == 401
    assert (await client.get("/platform/auth/me")).status_code == 401


async def test_brute_force_on_login_is_throttled(gateway: Any) -> None:
    platform, client = gateway
    await platform.auth.create_user(username="ann", password="a long passphrase")
    for _ in range(5):
        wrong = await client.post(
            "/platform/auth/login", json={"username": "ann", "password": "guess-guess"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["message"] == "invalid username or password"
    right = await client.post(
        "/platform/auth/login", json={"username": "ann", "password": "a long passphrase"}
    )
    assert right.status_code == 429
    assert int(right.headers["retry-after"]) > 0
    unknown = await client.post(
        "/platform/auth/login", json={"username": "nobody", "password": "whatever-1"}
    )
    assert unknown.json()["error"]["message"] == "invalid username or password"


async def test_injection_through_rest_inputs_does_nothing(gateway: Any) -> None:
    platform, client = gateway
    await platform.auth.create_user(username="ann", password="a long passphrase")
    admin = await token_for(platform, "root", "admin")
    for username in ["ann' --", "' OR '1'='1", 'ann"; DROP TABLE chatterfix_users; --']:
        reply = await client.post(
            "/platform/auth/login", json={"username": username, "password": "' OR '1'='1"}
        )
        assert reply.status_code in (401, 429)
    created = await client.post(
        "/platform/users",
        json={"username": "x'); DELETE FROM chatterfix_users; --"},
        headers=bearer(admin),
    )
    assert created.status_code == 422
    named = await client.post(
        "/platform/users",
        json={"username": "zed", "full_name": "'); DELETE FROM chatterfix_users; --"},
        headers=bearer(admin),
    )
    assert named.status_code == 201
    listed = (await client.get("/platform/users", headers=bearer(admin))).json()["users"]
    assert [user["username"] for user in listed] == ["ann", "root", "zed"]
    assert listed[2]["full_name"] == "'); DELETE FROM chatterfix_users; --"


async def test_bad_request_bodies_get_json_errors(gateway: Any) -> None:
    platform, client = gateway
    admin = await token_for(platform, "root", "admin")
    cases = [
        ("/platform/auth/login", b"{not json", 400),
        ("/platform/auth/login", b"[1, 2]", 400),
        ("/platform/auth/login", b'{"username": "a"}', 422),
        ("/platform/users", b'{"username": "ok", "roles": "admin"}', 422),
        ("/platform/tokens", b'{"expires_in": -5}', 422),
        ("/platform/tokens", b'{"colour": "red"}', 422),
    ]
    for path, body, status in cases:
        reply = await client.post(path, content=body, headers=bearer(admin))
        assert reply.status_code == status, (path, body, reply.text)
        assert reply.json()["error"]["request_id"]


async def test_auth_can_be_switched_off_for_development(tmp_path: Path) -> None:
    platform = Platform(
        config={"auth": {"enabled": False}},
        plugins=[WorkOrders()],
        load_entrypoints=False,
        builtins=False,
    )
    async with platform:
        transport = httpx.ASGITransport(app=platform.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.post("/api/work_orders")).status_code == 201
            stopped = await client.post("/platform/plugins/work_orders/stop")
            assert stopped.status_code == 200


def test_requires_is_public() -> None:
    assert chatterfix.requires is requires
