"""The streaming reverse proxy: ``/api/{app}/...`` of a remote app or registered service is
forwarded to one of its healthy instances.

Pure ASGI on an aiohttp client (one shared, explicitly sized connection pool per platform):
request and response bodies are streamed both ways with back-pressure, never held whole;
hop-by-hop headers are dropped, ``X-Forwarded-For/Proto/Host`` and ``X-Request-ID`` are set;
redirects are passed back, not followed; WebSocket and Server-Sent Events pass through.

Failures: no healthy instance answers ``503``; an instance that cannot be connected to is
ejected at once (service discovery re-admits it when its health check passes) and an
idempotent request is tried once more on another instance; no response headers within
``discovery.proxy.read_timeout`` answers ``504``. Every error is the gateway's JSON error.
"""

from __future__ import annotations

import functools
import importlib
import logging
import urllib.parse
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatterfix.gateway.errors import error_response
from chatterfix.plugins import PluginState
from chatterfix.routes import route_claims

if TYPE_CHECKING:
    import aiohttp

    from chatterfix.config import Config
    from chatterfix.platform import Platform
    from chatterfix.services.discovery import Instance, ServiceDiscovery

logger = logging.getLogger("chatterfix.proxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the proxy itself (the client's X-Forwarded-For is extended, not dropped).
REQUEST_SKIPPED = HOP_BY_HOP | {
    b"host",
    b"x-request-id",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
# The gateway's server adds its own date and server headers.
RESPONSE_SKIPPED = HOP_BY_HOP | {b"date", b"server"}
WEBSOCKET_SKIPPED = REQUEST_SKIPPED | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Not added by the client library when the incoming request has none: the upstream must see
# what the client sent (an Accept-Encoding added here would get compressed bodies back for a
# client that cannot read them).
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
WS_TRY_AGAIN_LATER = 1013
WS_INTERNAL_ERROR = 1011


@attrs.frozen(kw_only=True)
class ProxySettings:
    """``discovery.proxy.*``."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_connections: int = 512
    max_connections_per_host: int = 128
    keepalive_timeout: float = 4.0
    retry: bool = True

    @classmethod
    def from_config(cls, config: Config) -> ProxySettings:
        def get(key: str) -> Any:
            return config.get(f"discovery.proxy.{key}")

        return cls(
            connect_timeout=float(get("connect_timeout")),
            read_timeout=float(get("read_timeout")),
            max_connections=int(get("max_connections")),
            max_connections_per_host=int(get("max_connections_per_host")),
            keepalive_timeout=float(get("keepalive_timeout")),
            retry=bool(get("retry")),
        )


class UpstreamPool:
    """The platform's one client session to upstream instances (``platform.upstreams``).

    Opened once the platform has somewhere to proxy to (a remote app at start, else the
    first registration), closed when the platform stops. Its size is explicit:
    ``discovery.proxy.max_connections`` in all, ``max_connections_per_host`` per instance,
    idle connections kept ``keepalive_timeout`` seconds (below the usual 5 s of uvicorn
    upstreams, so that the pool does not reuse a connection the upstream is closing).
    """

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.session: aiohttp.ClientSession | None = None
        self._lock: anyio.Lock | None = None

    async def open(self) -> aiohttp.ClientSession:
        if self.session is not None:
            return self.session
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self.session is None:
                # Imported in a worker thread: aiohttp takes a fifth of a second to import,
                # which must not stall the requests being served meanwhile.
                await anyio.to_thread.run_sync(importlib.import_module, "aiohttp")
                import aiohttp

                settings = self.settings
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=settings.max_connections,
                        limit_per_host=settings.max_connections_per_host,
                        keepalive_timeout=settings.keepalive_timeout,
                        ttl_dns_cache=10,
                    ),
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        sock_connect=settings.connect_timeout,
                        sock_read=settings.read_timeout,
                    ),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=NO_AUTO_HEADERS,
                    trust_env=False,
                )
            return self.session

    async def aclose(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()


class ClientGone(Exception):
    """The client disconnected while its request body was being forwarded."""


class Proxy:
    """Forwards requests for ``/api/{name}/...`` to the instances of service ``name``."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.discovery: ServiceDiscovery = platform.discovery
        self.pool: UpstreamPool = platform.upstreams
        self.settings = self.pool.settings
        self._client: _Client | None = None
        self._routes: dict[str, ServiceRoute] = {}

    def route_for(self, name: str) -> ServiceRoute:
        """The pseudo-route of service ``name``, put in ``scope["route"]`` as the router does
        for its own routes, so that what labels requests by route (metrics, logs) needs no
        lookup for proxied ones."""
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = ServiceRoute(name, f"/api/{name}/{{path:path}}")
        return route

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a service to proxy to: registered, and not the name of a
        plugin of this gateway that is not running."""
        if not self.discovery.has(name):
            return False
        record = self.platform.plugins.records.get(name)
        return record is None or record.state is PluginState.RUNNING

    def wrap(self, app: ASGIApp, running: list[Any]) -> ASGIApp:
        """``app`` with this proxy in front for the services no running plugin has routes
        under (those go to ``app`` first, and reach the proxy only as its fallback)."""
        return ProxyDispatch(app, self, _claimed_names(running))

    # -- HTTP --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        scope["route"] = self._routes.get(name) or self.route_for(name)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, name)
        else:
            await self._http(scope, receive, send, name)

    async def _http(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        client = self._client or self._load()
        discovery = self.discovery
        instance = discovery.choose(name)
        if instance is None:
            await self._unavailable(scope, receive, send, name, "")
            return
        session = self.pool.session or await self.pool.open()
        method: str = scope["method"]
        headers, has_body = _request_headers(scope)
        body = _Body(receive) if has_body else None
        retry = self.settings.retry
        idempotent = method in IDEMPOTENT
        attempt = 0
        while True:
            instance.requests += 1
            instance.in_flight += 1
            began = perf_counter()
            try:
                response = await session.request(
                    method,
                    client.url(_upstream_target(instance, scope, name)),
                    headers=headers,
                    data=body.stream() if body is not None else None,
                    allow_redirects=False,
                )
            except client.retryable as exc:
                instance.in_flight -= 1
                if body is not None and body.gone:
                    return
                reason = _reason(exc)
                # Refused or not made: the request never left, the instance is down. Lost
                # after the request went out (the client library has already tried a fresh
                # connection once for an idempotent request): down too if idempotent; else
                # the request may have been acted upon, and is not repeated.
                not_sent = isinstance(exc, client.connect)
                discovery.failed(instance, reason, eject=not_sent or idempotent)
                untouched = body is None or not body.started
                if retry and attempt == 0 and untouched and (not_sent or idempotent):
                    other = discovery.choose(name, exclude=instance)
                    if other is not None:
                        attempt += 1
                        instance = other
                        continue
                await self._unavailable(scope, receive, send, name, f"{instance.url}: {reason}")
                return
            except client.timeout:
                instance.in_flight -= 1
                discovery.failed(instance, "timed out", eject=False)
                await error_response(
                    504,
                    f"service {name!r} did not answer within "
                    f"{self.settings.read_timeout:g} s ({instance.url})",
                    "upstream_timeout",
                    service=name,
                )(scope, receive, send)
                return
            except ClientGone:
                instance.in_flight -= 1
                return
            except client.error as exc:
                instance.in_flight -= 1
                if body is not None and body.gone:
                    return
                discovery.failed(instance, _reason(exc), eject=False)
                await error_response(
                    502,
                    f"service {name!r} sent an invalid answer ({instance.url}): {_reason(exc)}",
                    "bad_gateway",
                    service=name,
                )(scope, receive, send)
                return
            break
        try:
            discovery.record(instance, response.status, perf_counter() - began)
            await self._respond(response, receive, send, body, client)
        finally:
            instance.in_flight -= 1
            response.release()

    async def _respond(
        self,
        response: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        body: _Body | None,
        client: _Client,
    ) -> None:
        raw = response.raw_headers
        dropped = RESPONSE_SKIPPED | _connection_tokens(raw)
        out = [(k, v) for k, v in ((key.lower(), value) for key, value in raw) if k not in dropped]
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        content = response.content
        try:
            chunk = await content.readany()
        except client.broken as exc:
            _cut_short(response, exc)
            return
        if content.at_eof():  # the whole body came at once: one message
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            return
        # A longer body: streamed as it comes, until the client goes away.
        async with anyio.create_task_group() as group:
            if body is None or body.finished:
                group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            await _stream(chunk, response, send, client)
            group.cancel_scope.cancel()

    async def _unavailable(
        self, scope: Scope, receive: Receive, send: Send, name: str, detail: str
    ) -> None:
        message = f"no healthy instance of service {name!r} is available"
        if detail:
            message += f" (last failure: {detail})"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER, "reason": message})
            return
        await error_response(503, message, "service_unavailable", service=name)(
            scope, receive, send
        )

    def _load(self) -> _Client:
        """What the request path needs from aiohttp, looked up once."""
        import aiohttp
        from yarl import URL

        self._client = _Client(
            url=functools.partial(URL, encoded=True),
            connect=(aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError),
            retryable=(
                aiohttp.ClientConnectorError,
                aiohttp.ConnectionTimeoutError,
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
            ),
            timeout=(aiohttp.ServerTimeoutError, TimeoutError),
            error=(aiohttp.ClientError,),
            broken=(aiohttp.ClientError, TimeoutError),
        )
        return self._client

    # -- WebSocket ---------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        import aiohttp

        message = await receive()
        if message["type"] != "websocket.connect":
            return
        session = self.pool.session or await self.pool.open()
        instance = self.discovery.choose(name)
        tried = ""
        upstream: aiohttp.ClientWebSocketResponse | None = None
        for _ in range(2):
            if instance is None:
                break
            try:
                upstream = await session.ws_connect(
                    (self._client or self._load()).url(
                        _upstream_target(instance, scope, name, websocket=True)
                    ),
                    headers=_forwarded(scope, WEBSOCKET_SKIPPED),
                    protocols=tuple(scope.get("subprotocols") or ()),
                    autoclose=False,
                    autoping=True,
                    max_msg_size=0,
                )
                break
            except aiohttp.WSServerHandshakeError as exc:
                await send(
                    {
                        "type": "websocket.close",
                        "code": WS_INTERNAL_ERROR,
                        "reason": f"upstream refused the WebSocket ({exc.status})",
                    }
                )
                return
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                tried = f"{instance.url}: {_reason(exc)}"
                self.discovery.failed(instance, tried)
                instance = self.discovery.choose(name, exclude=instance)
        if upstream is None or instance is None:
            await self._unavailable(scope, receive, send, name, tried)
            return
        instance.requests += 1
        instance.in_flight += 1
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            async with anyio.create_task_group() as group:
                group.start_soon(_client_to_upstream, receive, upstream, group.cancel_scope)
                await _upstream_to_client(upstream, send)
                group.cancel_scope.cancel()
        finally:
            instance.in_flight -= 1
            with anyio.CancelScope(shield=True):
                await upstream.close()


@attrs.frozen
class ServiceRoute:
    """What ``scope["route"]`` holds for a proxied request: the service and the path
    template it answers (``/api/<service>/{path:path}``)."""

    service: str
    path: str


@attrs.frozen
class _Client:
    url: Any  # str -> yarl.URL, taken as already encoded
    connect: tuple[type[BaseException], ...]
    retryable: tuple[type[BaseException], ...]
    timeout: tuple[type[BaseException], ...]
    error: tuple[type[BaseException], ...]
    broken: tuple[type[BaseException], ...]  # a body that stops coming


class ProxyDispatch:
    """The innermost gateway application: requests under ``/api/{name}/`` of a proxied
    service go straight to the proxy, everything else to the router. Services whose name a
    running plugin has routes under (``claimed``; ``None``: some plugin route could match
    any name) go through the router first, and reach the proxy as its fallback."""

    __slots__ = ("app", "claimed", "proxy")

    def __init__(self, app: ASGIApp, proxy: Proxy, claimed: frozenset[str] | None) -> None:
        self.app = app
        self.proxy = proxy
        self.claimed = claimed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if path.startswith("/api/") and self.claimed is not None:
            name = path[5:].partition("/")[0]
            if name not in self.claimed and self.proxy.serves(name):
                await self.proxy(scope, receive, send, name)
                return
        await self.app(scope, receive, send)


def _claimed_names(running: list[Any]) -> frozenset[str] | None:
    """The names ``n`` under whose ``/api/n`` running plugins have routes; ``None`` when a
    plugin route could match under any name (a parameter in place of the name)."""
    names: set[str] = set()
    for record in running:
        for route in record.routes:
            for path, _ in route_claims(route):
                segments = path.strip("/").split("/")
                first = segments[0]
                if first.startswith("{"):
                    return None
                if first != "api":
                    continue
                if len(segments) < 2 or segments[1].startswith("{"):
                    return None
                names.add(segments[1])
    return frozenset(names)


class _Body:
    """The client's request body as an async iterator for the upstream request."""

    __slots__ = ("finished", "gone", "receive", "started")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.started = False
        self.finished = False
        self.gone = False

    async def stream(self) -> Any:
        self.started = True
        receive = self.receive
        while True:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                if not more:
                    self.finished = True
                if chunk:
                    yield chunk
                if not more:
                    return
            elif message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone


def _request_headers(scope: Scope) -> tuple[list[tuple[str, str]], bool]:
    """The headers to send upstream, and whether the request has a body."""
    has_body = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            has_body = value != b"0"
        elif key == b"transfer-encoding":
            has_body = True
    return _forwarded(scope, REQUEST_SKIPPED), has_body


def _forwarded(scope: Scope, skipped: frozenset[bytes]) -> list[tuple[str, str]]:
    raw = scope["headers"]
    dropped = skipped
    if any(key == b"connection" for key, _ in raw):
        dropped = skipped | _connection_tokens(raw)
    out: list[tuple[str, str]] = []
    host = forwarded_for = ""
    for key, value in raw:
        if key in dropped:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"x-forwarded-for":
                forwarded_for = value.decode("latin-1")
            continue
        out.append((key.decode("latin-1"), value.decode("latin-1")))
    client = scope.get("client")
    if client:
        if not forwarded_for:
            forwarded_for = client[0]
        elif client[0] not in (entry.strip() for entry in forwarded_for.split(",")):
            # (The server may already have taken the client's address from the header, as
            # uvicorn does for a trusted proxy: then the chain has it already.)
            forwarded_for = f"{forwarded_for}, {client[0]}"
    if forwarded_for:
        out.append(("X-Forwarded-For", forwarded_for))
    scheme = scope.get("scheme", "http")
    out.append(("X-Forwarded-Proto", "https" if scheme in ("https", "wss") else "http"))
    if host:
        out.append(("X-Forwarded-Host", host))
    request_id = scope.get("state", {}).get("request_id")
    if request_id:
        out.append(("X-Request-ID", request_id))
    return out


def _connection_tokens(headers: Any) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (hop-by-hop too, by RFC 9110)."""
    names: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


def _upstream_target(
    instance: Instance, scope: Scope, name: str, *, websocket: bool = False
) -> str:
    """The upstream URL (already percent-encoded): the request's own path and query, without
    ``/api/{name}`` when the instance strips that prefix."""
    raw_path: bytes | None = scope.get("raw_path")
    path = (
        raw_path.decode("latin-1")
        if raw_path
        else urllib.parse.quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
    )
    if instance.strip_prefix:
        prefix = f"/api/{name}"
        if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] in ("", "/"):
            path = path[len(prefix) :] or "/"
    base = instance.url
    if websocket:
        base = "ws" + base[4:]  # http -> ws, https -> wss
    query: bytes = scope.get("query_string", b"")
    return base + path + ("?" + query.decode("latin-1") if query else "")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _stream(
    chunk: bytes, response: aiohttp.ClientResponse, send: Send, client: _Client
) -> None:
    content = response.content
    try:
        while chunk:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await content.readany()
    except client.broken as exc:
        _cut_short(response, exc)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _cut_short(response: aiohttp.ClientResponse, exc: BaseException) -> None:
    """The upstream failed after the response headers were sent: all that can be done is
    to end the response unfinished (the client sees it cut short)."""
    logger.warning("response from %s cut short: %s", response.url.origin(), _reason(exc))
    response.close()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _client_to_upstream(
    receive: Receive, upstream: aiohttp.ClientWebSocketResponse, scope: anyio.CancelScope
) -> None:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            if message.get("text") is not None:
                await upstream.send_str(message["text"])
            else:
                await upstream.send_bytes(message.get("bytes") or b"")
        elif kind == "websocket.disconnect":
            await upstream.close(code=message.get("code", 1000))
            scope.cancel()
            return


async def _upstream_to_client(upstream: aiohttp.ClientWebSocketResponse, send: Send) -> None:
    import aiohttp

    async for message in upstream:
        if message.type is aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type is aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
        else:  # close, closing, error
            break
    code = upstream.close_code or 1000
    closing: Message = {"type": "websocket.close", "code": code}
    reason = getattr(upstream, "close_reason", None)
    if reason:
        closing["reason"] = reason
    await send(closing)
