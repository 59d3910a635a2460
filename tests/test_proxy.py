"""The reverse proxy with real processes: upstream services under uvicorn, the gateway served
by uvicorn on a loopback port, requests over real sockets."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from chatterfix import Platform, ServiceEndpoint, SystemEvents
from tests.helpers import started_gateway
from tests.proxy_support import (
    Upstream,
    eventually,
    fast_discovery,
    served,
    upstreams,
)

pytestmark = pytest.mark.anyio


def new_platform(**config: Any) -> Platform:
    merged = fast_discovery()
    for section, values in config.items():
        merged.setdefault(section, {}).update(values)
    return Platform(config=merged, load_entrypoints=False, builtins=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Upstream]]:
    """Two upstream processes shared by the correctness tests (they are not killed)."""
    with upstreams(tmp_path_factory.mktemp("upstreams"), "a", "b") as started:
        yield started


@pytest.fixture
async def gateway(pair: list[Upstream]) -> AsyncIterator[tuple[httpx.AsyncClient, Platform]]:
    """A gateway with service ``echo`` on instance a, ``stripped`` (strip_prefix) on b."""
    platform = new_platform(discovery={"proxy": {"read_timeout": 1.0}})
    async with served(platform) as (url, admin):
        await platform.discovery.register_service(ServiceEndpoint(name="echo", url=pair[0].url))
        await platform.discovery.register_service(
            ServiceEndpoint(name="stripped", url=pair[1].url, strip_prefix=True)
        )
        async with httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as client:
            yield client, platform


async def test_path_query_method_and_body_are_forwarded(gateway: Any) -> None:
    client, _ = gateway
    response = await client.post(
        "/api/echo/echo/a%20b/c?x=1&y=%2F&x=2", content=b"hello", headers={"X-Thing": "1"}
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["instance"] == "a"
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/api/echo/echo/a%20b/c"  # unchanged, still encoded
    assert seen["query"] == "x=1&y=%2F&x=2"
    assert seen["body_bytes"] == 5
    assert seen["headers"]["x-thing"] == ["1"]


async def test_strip_prefix_forwards_the_rest_of_the_path(gateway: Any) -> None:
    client, _ = gateway
    seen = (await client.get("/api/stripped/echo/x?q=1")).json()
    assert seen["instance"] == "b"
    assert seen["raw_path"] == "/echo/x"
    assert seen["query"] == "q=1"


async def test_forwarding_headers_are_set_and_hop_by_hop_ones_dropped(gateway: Any) -> None:
    client, _ = gateway
    response = await client.get(
        "/api/echo/echo",
        headers={
            "X-Request-ID": "trace-42",
            "X-Forwarded-For": "203.0.113.9",
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
    )
    headers = response.json()["headers"]
    assert headers["x-request-id"] == ["trace-42"]
    assert response.headers["x-request-id"] == "trace-42"
    # uvicorn trusts X-Forwarded-For from a loopback peer and takes the client's address
    # from it: the chain already names the client, and is passed on without a duplicate.
    assert headers["x-forwarded-for"] == ["203.0.113.9"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [client.base_url.netloc.decode()]
    for hop in ("x-secret-hop", "keep-alive", "te", "connection"):
        assert hop not in headers or headers[hop] != ["must not pass"], hop
    assert "x-secret-hop" not in headers
    assert headers["user-agent"][0].startswith("python-httpx")  # the client's own
    plain = (await client.get("/api/echo/echo")).json()["headers"]
    assert plain["x-forwarded-for"] == ["127.0.0.1"]
    assert len(plain["x-request-id"][0]) == 24  # the gateway's own id


async def test_nothing_is_added_on_the_clients_behalf(gateway: Any, pair: Any) -> None:
    client, _ = gateway
    async with httpx.AsyncClient(base_url=client.base_url) as bare:
        request = bare.build_request("GET", "/api/echo/echo")
        for name in ("accept", "accept-encoding", "user-agent"):
            del request.headers[name]
        seen = (await bare.send(request)).json()["headers"]
    assert "accept-encoding" not in seen
    assert "accept" not in seen
    assert "user-agent" not in seen
    assert seen["host"] == [pair[0].url.removeprefix("http://")]


async def test_response_headers_pass_once(gateway: Any) -> None:
    client, _ = gateway
    response = await client.get("/api/echo/headers")
    assert response.status_code == 200
    assert response.headers["x-custom"] == "yes"
    assert response.headers.get_list("set-cookie") == [
        "a=1; Path=/; SameSite=lax",
        "b=2; Path=/; SameSite=lax",
    ]
    assert len(response.headers.get_list("date")) == 1
    assert response.headers.get_list("server") == ["uvicorn"]  # the gateway's own, once


async def test_status_codes_pass_through(gateway: Any) -> None:
    client, _ = gateway
    for code in (201, 204, 400, 404, 418, 500, 503):
        response = await client.get(f"/api/echo/status/{code}")
        assert response.status_code == code
        if code != 204:
            assert response.json() == {"status": code, "instance": "a"}


async def test_redirects_are_passed_back_not_followed(gateway: Any) -> None:
    client, _ = gateway
    response = await client.get("/api/echo/redirect")
    assert response.status_code == 302
    assert response.headers["location"] == "/api/elsewhere"


async def test_head_and_options(gateway: Any) -> None:
    client, _ = gateway
    response = await client.head("/api/echo/sized?n=12345")
    assert response.status_code == 200
    assert response.headers["content-length"] == "12345"
    assert response.content == b""
    response = await client.options("/api/echo/echo")
    assert response.json()["method"] == "OPTIONS"


def pattern(n: int, chunk: int = 65536) -> bytes:
    block = bytes(range(256)) * (chunk // 256 + 1)
    out = bytearray()
    while len(out) < n:
        out += block[: min(chunk, n - len(out))]
    return bytes(out)


async def test_chunked_and_sized_downloads_stream_through(gateway: Any) -> None:
    client, _ = gateway
    n = 5_000_000
    expected = hashlib.sha256(pattern(n)).hexdigest()
    for path in (f"/api/echo/bytes?n={n}", f"/api/echo/sized?n={n}"):
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", path) as response:
            assert response.status_code == 200
            if "sized" in path:
                assert response.headers["content-length"] == str(n)
            else:
                assert "content-length" not in response.headers
                assert response.headers["transfer-encoding"] == "chunked"
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        assert size == n
        assert digest.hexdigest() == expected


async def test_uploads_stream_through_chunked_and_sized(gateway: Any) -> None:
    client, _ = gateway
    n = 8_000_000
    data = pattern(n, 100_000)
    expected = hashlib.sha256(data).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, n, 100_000):
            yield data[start : start + 100_000]

    response = await client.post("/api/echo/upload", content=chunks())  # chunked
    assert response.json()["bytes"] == n
    assert response.json()["sha256"] == expected
    response = await client.put("/api/echo/upload", content=data)  # Content-Length
    assert response.json() == {"bytes": n, "sha256": expected, "instance": "a"}


async def test_slow_upstream_answers_504(gateway: Any) -> None:
    client, _ = gateway
    response = await client.get("/api/echo/slow?seconds=3")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["service"] == "echo"


async def test_server_sent_events_pass_through(gateway: Any) -> None:
    client, _ = gateway
    received: list[str] = []
    async with client.stream("GET", "/api/echo/sse?count=4") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                received.append(line[6:])
    assert received == ["a 0", "a 1", "a 2", "a 3"]


async def test_websocket_passes_through(gateway: Any) -> None:
    import websockets

    client, _ = gateway
    url = str(client.base_url).replace("http://", "ws://") + "/api/echo/ws"
    async with websockets.connect(url, subprotocols=["chat.v1"]) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == "chat.v1"
        await socket.send("hi")
        assert await socket.recv() == "a: hi"
        await socket.send(b"\x00\x01")
        assert await socket.recv() == b"\x00\x01"
        await socket.send("close")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000


async def test_no_instance_answers_503_naming_the_service(gateway: Any) -> None:
    client, platform = gateway
    dead = Upstream("dead", Path("/tmp"))  # never started: nothing listens there
    await platform.discovery.register_service(ServiceEndpoint(name="ghost", url=dead.url))
    response = await client.get("/api/ghost/echo")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert "'ghost'" in error["message"]
    assert error["service"] == "ghost"
    response = await client.get("/api/ghost/echo")  # ejected meanwhile: no attempt at all
    assert response.status_code == 503
    assert json.loads(response.content)["error"]["request_id"] == response.headers["x-request-id"]


async def test_events_for_registration_and_health(gateway: Any) -> None:
    _, platform = gateway
    seen: list[Any] = []
    platform.events.subscribe("system.service.*", seen.append)
    dead = Upstream("dead2", Path("/tmp"))
    await platform.discovery.register_service(ServiceEndpoint(name="flaky", url=dead.url))
    await eventually(
        lambda: any(e.type == SystemEvents.SERVICE_UNHEALTHY for e in seen), "unhealthy event"
    )
    assert seen[0].type == SystemEvents.SERVICE_REGISTERED
    assert seen[0].data == {"service": "flaky", "url": dead.url}


@pytest.mark.slow
async def test_failover_when_an_instance_is_killed_under_load(tmp_path: Path) -> None:
    """Two instances under a running load loop; one is SIGKILLed: the gateway fails over,
    marks it unhealthy, and takes it back when it is restarted. No request fails."""
    platform = new_platform(discovery={"health_interval": 0.25, "health_max_interval": 0.5})
    seen: list[Any] = []
    platform.events.subscribe("system.service.*", seen.append)
    with upstreams(tmp_path, "a", "b") as (a, b):
        async with (
            served(platform) as (url, admin),
            httpx.AsyncClient(base_url=url, headers=admin, timeout=30) as client,
        ):
            for upstream in (a, b):
                body = {"name": "svc", "url": upstream.url}
                assert (await client.post("/platform/services", json=body)).status_code == 201
            results: list[tuple[int, str]] = []
            failures: list[str] = []
            done = anyio.Event()

            async def load(method: str) -> None:
                while not done.is_set():
                    try:
                        response = await client.request(method, "/api/svc/echo")
                    except httpx.HTTPError as exc:
                        failures.append(f"{method}: {exc!r}")
                        continue
                    instance = response.json().get("instance", "") if response.content else ""
                    results.append((response.status_code, instance))

            def served_by(name: str, since: int = 0) -> int:
                return sum(1 for _, instance in results[since:] if instance == name)

            a_instance = platform.discovery.service("svc").instances[a.url]  # type: ignore[union-attr]
            async with anyio.create_task_group() as group:
                for method in ("GET", "GET", "PUT", "DELETE"):  # idempotent methods
                    group.start_soon(load, method)
                await eventually(lambda: served_by("a") > 20 and served_by("b") > 20, "load")

                a.kill()
                killed_at = len(results)
                await eventually(lambda: not a_instance.healthy, "a marked unhealthy")
                await eventually(lambda: served_by("b", killed_at) > 100, "b serving alone")
                assert served_by("a", len(results)) == 0

                a.start()  # the same port again
                await eventually(lambda: a_instance.healthy, "a back in rotation")
                back_at = len(results)
                await eventually(lambda: served_by("a", back_at) > 20, "a serving again")
                done.set()
    assert failures == []
    assert {status for status, _ in results} == {200}, collections_counter(results)
    types = [(e.type, e.data["url"]) for e in seen]
    assert (SystemEvents.SERVICE_UNHEALTHY, a.url) in types
    assert (SystemEvents.SERVICE_RECOVERED, a.url) in types
    assert (SystemEvents.SERVICE_UNHEALTHY, b.url) not in types


def collections_counter(results: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    import collections

    return dict(collections.Counter(results))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_a_large_download_streams_through_chatterfix_start_in_bounded_memory(
    tmp_path: Path, make_folder_plugin: Any
) -> None:
    """A real ``chatterfix start`` with a remote app from its plugins folder: 256 MiB go
    through it while its memory stays flat (the benchmark streams 1 GiB)."""
    size = 256 << 20
    with upstreams(tmp_path, "big") as (upstream,):
        folder = make_folder_plugin(
            "files", code=None, manifest={"name": "files", "url": upstream.url}
        )
        with started_gateway(sys.executable, "--plugins-dir", str(folder), cwd=tmp_path) as (
            url,
            process,
        ):
            with httpx.stream("GET", f"{url}/api/files/bytes?n={8 << 20}") as warm:
                for _ in warm.iter_raw():
                    pass
            before = peak = rss_kib(process.pid)
            received = 0
            with httpx.stream("GET", f"{url}/api/files/bytes?n={size}") as response:
                assert response.status_code == 200
                for chunk in response.iter_raw(1 << 20):
                    received += len(chunk)
                    peak = max(peak, rss_kib(process.pid))
    assert received == size
    assert (peak - before) / 1024 < 30, f"RSS grew by {(peak - before) / 1024:.1f} MiB"
