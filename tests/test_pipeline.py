"""The gateway's middleware pipeline: body size limit, CORS, rate limits, stage order."""

from __future__ import annotations

import secrets
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import chatterfix
from chatterfix import Platform, hookimpl
from chatterfix.config import ConfigError
from chatterfix.gateway.ratelimit import MemoryBackend, RedisBackend
from chatterfix.route_options import Limit, parse_limit, parse_size
from tests.helpers import gateway, require_service

pytestmark = pytest.mark.anyio


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body)})


@chatterfix.rate_limit("3/minute")
async def scarce(request: Request) -> JSONResponse:
    return JSONResponse({"scarce": True})


@chatterfix.rate_limit(None)
async def free(request: Request) -> JSONResponse:
    return JSONResponse({"free": True})


@chatterfix.max_body("1KB")
async def small_upload(request: Request) -> JSONResponse:
    return await echo(request)


@chatterfix.max_body("50MB")
async def big_upload(request: Request) -> JSONResponse:
    return await echo(request)


@chatterfix.rate_limit("2/second")
async def deep(request: Request) -> JSONResponse:
    return JSONResponse({"deep": True})


class Edge:
    PLUGIN_MANIFEST = {"name": "edge", "description": "Routes with pipeline options"}

    @hookimpl
    def register_routes(self) -> list[Any]:
        return [
            Route("/api/edge/echo", echo, methods=["GET", "POST"]),
            Route("/api/edge/scarce", scarce),
            Route("/api/edge/free", free),
            Route("/api/edge/small", small_upload, methods=["POST"]),
            Route("/api/edge/big", big_upload, methods=["POST"]),
            Mount("/api/edge/nested", routes=[Route("/deep", deep)]),
        ]


def edge_platform(**gateway_config: Any) -> Platform:
    return Platform(
        config={"gateway": gateway_config},
        plugins=[Edge()],
        load_entrypoints=False,
        builtins=False,
    )


def with_clock(platform: Platform) -> Clock:
    clock = Clock()
    platform.asgi_app.rate_limiter.backend = MemoryBackend(clock=clock)
    return clock


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


# -- parsing -------------------------------------------------------------------------------


def test_limits_and_sizes_are_parsed_with_helpful_errors() -> None:
    assert parse_limit("10/minute") == Limit(10, 60.0, "10/minute")
    assert parse_limit("5 per second").rate == 5.0
    assert parse_limit("100/15m").period == 900.0
    assert parse_limit("1000/days").period == 86400.0
    assert parse_limit("10/minute").policy == "10;w=60"
    with pytest.raises(ValueError, match="invalid rate limit 'ten a minute'"):
        parse_limit("ten a minute")
    with pytest.raises(ValueError, match="at least 1 request"):
        parse_limit("0/second")
    assert parse_size("50MB") == 50_000_000
    assert parse_size("1GiB") == 1024**3
    assert parse_size("512 KiB") == 512 * 1024
    assert parse_size(2048) == 2048
    with pytest.raises(ValueError, match="KB, MB, GB are powers of 1000"):
        parse_size("50 megs")
    with pytest.raises(ValueError, match="invalid rate limit"):
        chatterfix.rate_limit("fast")


# -- body size limit -----------------------------------------------------------------------


async def test_body_over_the_limit_by_content_length_is_413(serve: Any) -> None:
    platform = edge_platform(max_body_bytes=100)
    async with serve(platform) as client:
        fits = await client.post("/api/edge/echo", content=b"x" * 100)
        too_big = await client.post("/api/edge/echo", content=b"x" * 101)
    assert fits.json() == {"size": 100}
    error = error_of(too_big, 413, "payload_too_large")
    assert error["limit"] == 100
    assert "100 bytes" in error["message"]


async def test_chunked_body_is_counted_as_it_streams(serve: Any) -> None:
    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"y" * 40

    platform = edge_platform(max_body_bytes=100)
    async with serve(platform) as client:
        fits = await client.post("/api/edge/echo", content=chunks(2))
        too_big = await client.post("/api/edge/echo", content=chunks(3))
    assert fits.json() == {"size": 80}
    error_of(too_big, 413, "payload_too_large")


async def test_routes_override_the_body_limit(serve: Any) -> None:
    platform = edge_platform(max_body_bytes=100)
    async with serve(platform) as client:
        big = await client.post("/api/edge/big", content=b"z" * 5000)
        small_ok = await client.post("/api/edge/small", content=b"z" * 1000)
        small_refused = await client.post("/api/edge/small", content=b"z" * 1001)
    assert big.json() == {"size": 5000}
    assert small_ok.json() == {"size": 1000}
    assert error_of(small_refused, 413, "payload_too_large")["limit"] == 1000


async def test_no_body_limit_when_set_to_zero(serve: Any) -> None:
    platform = edge_platform(max_body_bytes=0)
    async with serve(platform) as client:
        response = await client.post("/api/edge/echo", content=b"x" * 200_000)
        refused = await client.post("/api/edge/small", content=b"x" * 1001)
    assert response.json() == {"size": 200_000}
    error_of(refused, 413, "payload_too_large")


# -- CORS ----------------------------------------------------------------------------------

ORIGIN = "https://cmms.example.com"


async def test_cors_preflight_and_simple_requests(serve: Any) -> None:
    platform = edge_platform(cors={"allow_origins": [ORIGIN], "allow_credentials": True})
    async with serve(platform, admin=False) as client:
        preflight = await client.options(
            "/api/edge/echo",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "Authorization, Content-Type",
            },
        )
        refused = await client.options(
            "/api/edge/echo",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        simple = await client.get("/api/edge/echo", headers={"Origin": ORIGIN})
        other = await client.get("/api/edge/echo", headers={"Origin": "https://evil.example"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-max-age"] == "600"
    assert refused.status_code == 400
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "ratelimit-remaining" in exposed
    assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_without_origins(serve: Any) -> None:
    platform = edge_platform()
    async with serve(platform, admin=False) as client:
        response = await client.get("/api/edge/echo", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    assert "cors" not in platform.asgi_app.routing.stages


async def test_cors_origin_regex(serve: Any) -> None:
    platform = edge_platform(cors={"allow_origin_regex": r"https://.*\.cmms\.example"})
    async with serve(platform, admin=False) as client:
        allowed = await client.get("/api/edge/echo", headers={"Origin": "https://a.cmms.example"})
        refused = await client.get("/api/edge/echo", headers={"Origin": "https://cmms.evil"})
    assert allowed.headers["access-control-allow-origin"] == "https://a.cmms.example"
    assert "access-control-allow-origin" not in refused.headers


# -- rate limits ---------------------------------------------------------------------------


async def test_exact_allowance_then_429_with_headers(serve: Any) -> None:
    platform = edge_platform(rate_limit={"requests": 3, "period": 60})
    clock = with_clock(platform)
    async with serve(platform, admin=False) as client:
        allowed = [await client.get("/api/edge/echo") for _ in range(3)]
        refused = await client.get("/api/edge/echo")
        clock.advance(19.9)
        still_refused = await client.get("/api/edge/echo")
    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r.headers["ratelimit-remaining"] for r in allowed] == ["2", "1", "0"]
    assert allowed[0].headers["ratelimit-limit"] == "3"
    assert "ratelimit-policy" not in allowed[0].headers
    assert allowed[0].headers["ratelimit-reset"] == "20"  # one token used: back in 20 s
    assert allowed[2].headers["ratelimit-reset"] == "60"
    error = error_of(refused, 429, "rate_limited")
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-reset"] == "60"
    assert refused.headers["ratelimit-policy"] == "3;w=60"
    assert error["limit"] == "3/minute"
    assert error["retry_after"] == 20
    assert still_refused.status_code == 429
    assert still_refused.headers["retry-after"] == "1"


async def test_tokens_refill_at_the_limits_rate(serve: Any) -> None:
    platform = edge_platform(rate_limit={"requests": 3, "period": 60})
    clock = with_clock(platform)
    async with serve(platform, admin=False) as client:

        async def status() -> int:
            return (await client.get("/api/edge/echo")).status_code

        drained = [await status() for _ in range(4)]
        clock.advance(20)  # one token back
        one_more = [await status(), await status()]
        clock.advance(40)  # two tokens back
        two_more = [await status() for _ in range(3)]
        clock.advance(3600)  # a full bucket holds 3, however long the wait
        full = [await status() for _ in range(4)]
    assert drained == [200, 200, 200, 429]
    assert one_more == [200, 429]
    assert two_more == [200, 200, 429]
    assert full == [200, 200, 200, 429]


async def test_each_token_and_each_address_has_its_own_bucket(serve: Any) -> None:
    platform = edge_platform(rate_limit={"requests": 2, "period": 3600})
    with_clock(platform)
    async with serve(platform, admin=False) as client:
        users = []
        for name in ("ana", "ben"):
            user = await platform.auth.create_user(username=name)
            issued = await platform.auth.create_token(user.id, "tests")
            users.append({"Authorization": f"Bearer {issued.token}"})

        async def statuses(headers: dict[str, str]) -> list[int]:
            return [
                (await client.get("/api/edge/echo", headers=headers)).status_code for _ in range(3)
            ]

        ana, ben, anonymous = await statuses(users[0]), await statuses(users[1]), await statuses({})
    assert ana == ben == anonymous == [200, 200, 429]


async def test_route_limits_have_their_own_buckets_and_may_be_off(serve: Any) -> None:
    platform = edge_platform(rate_limit={"requests": 1, "period": 3600})
    with_clock(platform)
    async with serve(platform, admin=False) as client:
        default = [(await client.get("/api/edge/echo")).status_code for _ in range(2)]
        scarce = [await client.get("/api/edge/scarce") for _ in range(4)]
        free = [(await client.get("/api/edge/free")).status_code for _ in range(5)]
        health = [(await client.get("/health/live")).status_code for _ in range(5)]
        deep = [(await client.get("/api/edge/nested/deep")).status_code for _ in range(3)]
    assert default == [200, 429]
    assert [r.status_code for r in scarce] == [200, 200, 200, 429]
    assert scarce[0].headers["ratelimit-limit"] == "3"
    assert scarce[3].headers["ratelimit-policy"] == "3;w=60"
    assert scarce[3].json()["error"]["limit"] == "3/minute"
    assert free == [200] * 5
    assert health == [200] * 5
    assert deep == [200, 200, 429]


async def test_route_limits_apply_without_a_default_limit(serve: Any) -> None:
    platform = edge_platform()
    with_clock(platform)
    async with serve(platform, admin=False) as client:
        plain = await client.get("/api/edge/echo")
        scarce = [(await client.get("/api/edge/scarce")).status_code for _ in range(4)]
    assert "ratelimit-limit" not in plain.headers
    assert scarce == [200, 200, 200, 429]


async def test_no_rate_limit_stage_without_limits() -> None:
    platform = Platform(load_entrypoints=False, builtins=False)
    assert platform.asgi_app.routing.stages == ["body_limit", "auth"]


async def test_a_runtime_change_rebuilds_the_pipeline(serve: Any) -> None:
    platform = edge_platform()
    with_clock(platform)
    async with serve(platform, admin=False) as client:
        before = [(await client.get("/api/edge/echo")).status_code for _ in range(3)]
        platform.config.set("gateway.rate_limit.requests", 2)
        platform.config.set("gateway.rate_limit.period", 60)
        after = [(await client.get("/api/edge/echo")).status_code for _ in range(3)]
    assert before == [200, 200, 200]
    assert after == [200, 200, 429]


def test_memory_backend_stays_bounded() -> None:
    import anyio

    clock = Clock()
    backend = MemoryBackend(clock=clock, max_keys=100)
    limit = Limit(5, 1.0)

    async def hit_many() -> None:
        for number in range(1000):
            await backend.hit(f"client-{number}", limit)

    anyio.run(hit_many)
    assert len(backend) <= 100


# -- stage order ---------------------------------------------------------------------------


async def test_stage_order_is_configurable(serve: Any) -> None:
    headers = {"Authorization": "Bearer cfx_not-a-real-token"}
    default = edge_platform(max_body_bytes=10)
    auth_first = edge_platform(
        max_body_bytes=10, middleware=["auth", "body_limit", "cors", "rate_limit", "plugins"]
    )
    no_limit = edge_platform(max_body_bytes=10, middleware=["cors", "rate_limit", "auth"])
    results = []
    for platform in (default, auth_first, no_limit):
        async with serve(platform, admin=False) as client:
            results.append(await client.post("/api/edge/echo", content=b"x" * 50, headers=headers))
    # rate_limit is there for the plugin's routes with limits of their own
    assert default.asgi_app.routing.stages == ["body_limit", "rate_limit", "auth"]
    assert auth_first.asgi_app.routing.stages == ["auth", "body_limit", "rate_limit"]
    assert no_limit.asgi_app.routing.stages == ["rate_limit", "auth"]
    error_of(results[0], 413, "payload_too_large")  # the body is refused before the token
    error_of(results[1], 401, "invalid_token")  # the token is checked first
    error_of(results[2], 401, "invalid_token")


async def test_rate_limit_after_auth_counts_per_user(serve: Any) -> None:
    platform = edge_platform(
        rate_limit={"requests": 2, "period": 3600},
        middleware=["body_limit", "auth", "rate_limit", "plugins"],
    )
    with_clock(platform)
    async with serve(platform, admin=False) as client:
        user = await platform.auth.create_user(username="cara")
        tokens = [(await platform.auth.create_token(user.id, name)).token for name in "ab"]
        statuses = [
            (
                await client.get("/api/edge/echo", headers={"Authorization": f"Bearer {token}"})
            ).status_code
            for token in (*tokens, *tokens)
        ]
    assert statuses == [200, 200, 429, 429]  # two tokens, one user, one bucket


def test_unknown_stages_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        Platform(
            config={"gateway": {"middleware": ["cors", "compression"]}},
            load_entrypoints=False,
            builtins=False,
        )
    message = str(caught.value)
    assert "gateway.middleware" in message
    assert "'compression' is not one of 'body_limit', 'cors', 'rate_limit', 'auth'" in message


def test_a_stage_listed_twice_is_refused() -> None:
    platform = Platform(
        config={"gateway": {"middleware": ["cors", "auth", "cors"]}},
        load_entrypoints=False,
        builtins=False,
    )
    with pytest.raises(ConfigError, match="listed twice: cors"):
        platform.asgi_app  # noqa: B018


def test_an_unknown_rate_limit_backend_is_refused() -> None:
    platform = Platform(
        config={"gateway": {"rate_limit": {"backend": "mongodb://127.0.0.1"}}},
        load_entrypoints=False,
        builtins=False,
    )
    with pytest.raises(ConfigError, match="expected 'memory' or a redis:// URL"):
        platform.asgi_app  # noqa: B018


class Tagging:
    """Plugin middleware: adds a header, and refuses requests that ask it to."""

    PLUGIN_MANIFEST = {"name": "tagging"}

    @hookimpl
    def register_middleware(self) -> list[Any]:
        from starlette.types import ASGIApp, Message, Receive, Scope, Send

        from chatterfix import APIError

        class Tag:
            def __init__(self, app: ASGIApp) -> None:
                self.app = app

            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] == "http" and (b"x-refuse", b"1") in scope["headers"]:
                    raise APIError(451, "refused by the tagging plugin", "refused")

                async def tagged(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message["headers"], (b"x-tagged", b"yes")]
                    await send(message)

                await self.app(scope, receive, tagged)

        return [Tag]


async def test_plugin_middleware_is_a_stage(serve: Any) -> None:
    platform = Platform(
        config={"gateway": {"max_body_bytes": 10}},
        plugins=[Edge(), Tagging()],
        load_entrypoints=False,
        builtins=False,
    )
    plugins_first = Platform(
        config={"gateway": {"max_body_bytes": 10, "middleware": ["plugins", "body_limit"]}},
        plugins=[Edge(), Tagging()],
        load_entrypoints=False,
        builtins=False,
    )
    async with serve(platform, admin=False) as client:
        tagged = await client.get("/api/edge/echo")
        refused = await client.get("/api/edge/echo", headers={"x-refuse": "1"})
        too_big = await client.post("/api/edge/echo", content=b"x" * 50)
    async with serve(plugins_first, admin=False) as client:
        too_big_tagged = await client.post("/api/edge/echo", content=b"x" * 50)
    assert platform.asgi_app.routing.stages == ["body_limit", "rate_limit", "auth", "plugins"]
    assert tagged.headers["x-tagged"] == "yes"
    error_of(refused, 451, "refused")
    assert "x-tagged" not in too_big.headers  # refused outside the plugin's middleware
    assert too_big_tagged.headers["x-tagged"] == "yes"
    error_of(too_big_tagged, 413, "payload_too_large")


# -- real servers --------------------------------------------------------------------------

EDGE_PLUGIN = textwrap.dedent(
    """
    import chatterfix
    from starlette.responses import JSONResponse
    from starlette.routing import Route


    async def echo(request):
        body = await request.body()
        return JSONResponse({"size": len(body)})


    @chatterfix.hookimpl
    def register_routes(platform):
        return [Route("/api/edge/echo", echo, methods=["GET", "POST"])]
    """
)


@pytest.fixture
def edge_folder(make_folder_plugin: Callable[..., Path]) -> Path:
    return make_folder_plugin("edge", EDGE_PLUGIN)


def test_real_server_refuses_large_and_chunked_bodies(edge_folder: Path, tmp_path: Path) -> None:
    env = {"CHATTERFIX_GATEWAY__MAX_BODY_BYTES": "1000"}

    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"c" * 400

    with (
        gateway(sys.executable, "--plugins-dir", str(edge_folder), cwd=tmp_path, env=env) as url,
        httpx.Client(base_url=url) as client,
    ):
        fits = client.post("/api/edge/echo", content=b"x" * 1000)
        too_big = client.post("/api/edge/echo", content=b"x" * 20_000)
        chunked_fits = client.post("/api/edge/echo", content=chunks(2))
        chunked_too_big = client.post("/api/edge/echo", content=chunks(3))
        after = client.get("/api/edge/echo")
    assert fits.json() == {"size": 1000}
    assert error_of(too_big, 413, "payload_too_large")["limit"] == 1000
    assert chunked_fits.json() == {"size": 800}
    error_of(chunked_too_big, 413, "payload_too_large")
    assert after.status_code == 200


def test_two_gateways_share_one_limit_through_redis(edge_folder: Path, tmp_path: Path) -> None:
    require_service(6379, "Redis")
    prefix = f"cfx-test-{secrets.token_hex(6)}"
    env = {
        "CHATTERFIX_GATEWAY__RATE_LIMIT__REQUESTS": "5",
        "CHATTERFIX_GATEWAY__RATE_LIMIT__PERIOD": "3600",
        "CHATTERFIX_GATEWAY__RATE_LIMIT__BACKEND": "redis://127.0.0.1:6379/0",
        "CHATTERFIX_GATEWAY__RATE_LIMIT__KEY_PREFIX": prefix,
    }
    args = ("--plugins-dir", str(edge_folder))
    with (
        gateway(sys.executable, *args, cwd=tmp_path, env=env) as first,
        gateway(sys.executable, *args, cwd=tmp_path, env=env) as second,
    ):
        responses = [httpx.get(f"{url}/api/edge/echo", timeout=10) for url in [first, second] * 4]
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * 5 + [429] * 3
    assert [r.headers["ratelimit-remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    assert all(int(r.headers["retry-after"]) > 0 for r in responses[5:])
    assert responses[5].json()["error"]["code"] == "rate_limited"


async def test_redis_backend_buckets_and_failing_open() -> None:
    require_service(6379, "Redis")
    backend = RedisBackend("redis://127.0.0.1:6379/0", f"cfx-test-{secrets.token_hex(6)}")
    limit = Limit(2, 60.0)
    try:
        decisions = [await backend.hit("client", limit) for _ in range(3)]
        other = await backend.hit("other", limit)
    finally:
        await backend.aclose()
    assert [d.allowed for d in decisions] == [True, True, False]
    assert [d.remaining for d in decisions] == [1, 0, 0]
    assert decisions[2].retry_after == 30
    assert other.allowed

    unreachable = RedisBackend("redis://127.0.0.1:1/0", "cfx-test")
    try:
        decision = await unreachable.hit("client", limit)
    finally:
        await unreachable.aclose()
    assert decision.allowed  # a rate limiter must not take the gateway down with it
    assert unreachable.failures == 1
