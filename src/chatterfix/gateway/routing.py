"""A routing generation: one built gateway application and the requests it is serving.

The outermost stage of the gateway's pipeline is one pure-ASGI layer, :class:`Routing`:
count the request (so a swap can drain), give it a request id, set the request's context
variables, make sure an unhandled error still ends with a JSON answer, write the access
log and count the request in the metrics. One layer instead of several keeps the
per-request overhead small; the configurable stages (:mod:`chatterfix.gateway.pipeline`)
come inside it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import secrets
from collections.abc import Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatterfix.context import current_platform, current_request_id, current_scope, serving_routing
from chatterfix.gateway.errors import error_response, internal_error
from chatterfix.services.logging import ACCESS_LOGGER

if TYPE_CHECKING:
    from chatterfix.gateway.metrics import RequestMetrics
    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.gateway")
access_logger = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED = "<unmatched>"  # the metrics' route label for requests no route matched
# Headers a stage wants on the response (the rate limit's): this layer adds them when it
# adds X-Request-ID, which saves each stage a send wrapper of its own.
RESPONSE_HEADERS = "chatterfix.response_headers"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def platform_of(request: Request) -> Platform:
    """The platform serving ``request`` (the gateway application keeps it in its state)."""
    platform: Platform = request.app.state.platform
    return platform


class RequestIds:
    """Unique request ids, cheaply: a random per-process prefix and a counter.

    ``uuid4()`` reads the kernel's random source for every request, which costs several
    microseconds under load; 64 random bits per process keep ids unique across replicas.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):08x}"


class Routing:
    """One built generation of the gateway, counting the requests it is serving.

    Requests that manage plugins (start, stop, reload) mark themselves *exempt*: a drain
    waiting for this generation's traffic to end must not wait for them, since they may
    themselves be waiting for the drain.
    """

    __slots__ = (
        "_idle",
        "access_log",
        "app",
        "cache",
        "exempt",
        "ids",
        "in_flight",
        "metrics",
        "platform",
        "route_labels",
        "route_plugins",
        "stages",
        "starlette",
    )

    def __init__(
        self,
        app: ASGIApp,
        platform: Any,
        ids: RequestIds,
        *,
        starlette: ASGIApp | None = None,
        metrics: RequestMetrics | None = None,
        route_labels: dict[int, str] | None = None,
        stages: list[str] | None = None,
    ) -> None:
        self.app = app
        self.platform = platform
        self.ids = ids
        self.in_flight = 0
        self.exempt = 0
        self._idle: anyio.Event | None = None
        self.access_log = bool(platform.config.get("gateway.access_log"))
        self.route_plugins = _route_plugins(platform)
        # The Starlette application inside the pipeline: scope["app"] from the start, so
        # that stages and plugin middleware see the same request.app as the handlers.
        self.starlette = starlette
        self.metrics = metrics
        self.route_labels = route_labels or {}
        self.stages = stages or []  # the pipeline's stages in this generation, outermost first
        self.cache: dict[str, Any] = {}  # what is built once per generation (OpenAPI)

    @property
    def busy(self) -> int:
        return self.in_flight - self.exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics
        began = perf_counter() if self.access_log or metrics is not None else 0.0
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and _VALID_ID.fullmatch(value):
                request_id = value.decode("latin-1")
                break
        if request_id is None:
            request_id = self.ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        if self.starlette is not None:
            scope["app"] = self.starlette
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        status = 0  # none sent yet

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = scope.get(RESPONSE_HEADERS)
                if extra:
                    message["headers"] = [*message.get("headers", ()), header, *extra]
                else:
                    message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        self.in_flight += 1
        tokens = (
            serving_routing.set(self),
            current_platform.set(self.platform),
            current_request_id.set(request_id),
            current_scope.set(scope),
        )
        try:
            await self.app(scope, receive, send_with_id)
        except (Exception, SystemExit):
            # SystemExit too: a handler calling sys.exit() must not stop the server.
            # Starlette has already answered with the JSON 500 of our exception handler
            # when it could; here the error is logged once, and never re-raised to the
            # server unless the response was cut short.
            logger.exception("unhandled error in %s %s", scope.get("method"), scope["path"])
            if not status and scope["type"] == "http":
                await internal_error()(scope, receive, send_with_id)
        except anyio.get_cancelled_exc_class():
            # The server cancels what outlasts its shutdown grace period: the client gets a
            # JSON 503 saying so rather than the server's own plain-text 500.
            if not status and scope["type"] == "http":
                with anyio.CancelScope(shield=True):
                    await error_response(503, "the gateway is shutting down", "shutting_down")(
                        scope, receive, send_with_id
                    )
            raise
        finally:
            if scope["type"] == "http":
                if metrics is not None:
                    route = scope.get("route")
                    metrics.observe(
                        self.route_labels.get(id(route)) or _route_path(route)
                        if route is not None
                        else self._label_unrouted(scope, status),
                        scope["method"],
                        status,
                        perf_counter() - began,
                    )
                if self.access_log:
                    _log_access(scope, status, began)
            current_scope.reset(tokens[3])
            current_request_id.reset(tokens[2])
            current_platform.reset(tokens[1])
            serving_routing.reset(tokens[0])
            self.in_flight -= 1
            self._signal()

    def _label_unrouted(self, scope: Scope, status: int) -> str:
        """The route a request answered before routing (a 413, a 429, a CORS preflight)
        was for, found the way the router would; not looked up for 404s."""
        router = getattr(self.starlette, "router", None)
        if status == 404 or router is None:
            return UNMATCHED
        for route in router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return self.route_labels.get(id(route), UNMATCHED)
        return UNMATCHED

    def _signal(self) -> None:
        if self._idle is not None and self.busy <= 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request other than exempt ones is being served."""
        if self.busy <= 0:
            return
        if self._idle is None or self._idle.is_set():
            self._idle = anyio.Event()
        await self._idle.wait()


def _route_path(route: Any) -> str:
    """The template of a route this generation does not list: the pseudo-route the proxy
    puts in the scope for a service (``/api/<service>/{path:path}``)."""
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def _route_plugins(platform: Any) -> dict[int, str]:
    """The running plugins' routes (with those inside their mounts) -> plugin name, keyed by
    ``id()``: Starlette routes are not hashable, and this routing keeps them alive."""
    owners: dict[int, str] = {}
    for record in platform.plugins.running():
        pending = list(record.routes)
        while pending:
            route = pending.pop()
            owners[id(route)] = record.name
            pending.extend(getattr(route, "routes", None) or ())
    return owners


def _log_access(scope: Scope, status: int, began: float) -> None:
    """One record per HTTP request; the request id and plugin come from the context."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round((perf_counter() - began) * 1000, 3)
    method, path, client = scope["method"], scope["path"], scope.get("client")
    # Built here rather than by access_logger.info(): that would walk the stack to find the
    # caller, a third of the record's cost, to report a line that is always this one.
    record = access_logger.makeRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        0,
        "%s %s %s %.2fms",
        (method, path, status or "-", duration_ms),
        None,
        "_log_access",
    )
    fields = record.__dict__
    fields["method"] = method
    fields["path"] = path
    fields["status"] = status or None  # None: the client went away before any response
    fields["duration_ms"] = duration_ms
    fields["client"] = f"{client[0]}:{client[1]}" if client else None
    access_logger.handle(record)


@contextlib.contextmanager
def exempt_from_drain() -> Iterator[None]:
    """Mark the current request as one a drain need not wait for."""
    routing = serving_routing.get()
    if not isinstance(routing, Routing):
        yield
        return
    routing.exempt += 1
    routing._signal()
    try:
        yield
    finally:
        routing.exempt -= 1
