"""The gateway's middleware pipeline: pure-ASGI stages in a configurable order.

Outermost, always, is the routing generation itself (:class:`~chatterfix.gateway.routing.
Routing`): request id, context, access log, metrics and the last-resort JSON 500 live in
that one layer, which is cheaper than one layer each. Inside it come the stages named by
``gateway.middleware``, outermost first:

``body_limit``
    ``413`` for a body larger than ``gateway.max_body_bytes`` (or the route's
    :func:`~chatterfix.route_options.max_body`): by ``Content-Length`` before reading, and
    by counting the bytes of a chunked body as it is read.
``cors``
    Starlette's ``CORSMiddleware`` configured from ``gateway.cors.*``; only present when
    ``gateway.cors.allow_origins`` or ``allow_origin_regex`` is set.
``rate_limit``
    token buckets (:mod:`chatterfix.gateway.ratelimit`); present when
    ``gateway.rate_limit.requests`` is set or a route has a limit of its own.
``auth``
    the bearer-token layer (:mod:`chatterfix.gateway.auth`).
``plugins``
    the middleware of the running plugins (``register_middleware``), inside JSON error
    handling for what they raise.

A stage with nothing to do is left out of the generation, so it costs nothing. A stage
left out of ``gateway.middleware`` is not run at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatterfix.config import ConfigError
from chatterfix.gateway.auth import Authentication
from chatterfix.gateway.errors import APIError, error_response
from chatterfix.gateway.ratelimit import RateLimit, RateLimiter
from chatterfix.route_options import (
    MAX_BODY_ATTRIBUTE,
    RATE_LIMIT_ATTRIBUTE,
    Limit,
)
from chatterfix.routes import find_conflict, route_claims

if TYPE_CHECKING:
    from chatterfix.platform import Platform

STAGES = ("body_limit", "cors", "rate_limit", "auth", "plugins")
DEFAULT_ORDER = list(STAGES)
_OPTIONS_KEY = "chatterfix.route_options"
_UNSET: Any = object()


class PipelineError(ConfigError):
    """``gateway.middleware`` names a stage that does not exist, or one twice."""


def check_order(order: Iterable[Any]) -> list[str]:
    """``gateway.middleware`` as a list of stage names, or :class:`PipelineError` naming the
    unknown (or repeated) ones."""
    names = list(order)
    unknown = [name for name in names if name not in STAGES]
    if unknown:
        raise PipelineError(
            f"gateway.middleware: unknown stage(s) {', '.join(map(repr, unknown))}; "
            f"the stages are {', '.join(STAGES)}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PipelineError(f"gateway.middleware: stage(s) listed twice: {', '.join(repeated)}")
    return names


# -- per-route options ---------------------------------------------------------------------


@attrs.frozen
class RouteOptions:
    """What a route's decorators ask of the pipeline."""

    bucket: str  # the route's own rate-limit bucket: its path template
    rate_limit: Limit | None = _UNSET
    max_body: int | None = _UNSET

    @property
    def has_rate_limit(self) -> bool:
        return self.rate_limit is not _UNSET

    @property
    def has_max_body(self) -> bool:
        return self.max_body is not _UNSET


def _options_of(endpoint: Any, path: str) -> RouteOptions | None:
    limit = getattr(endpoint, RATE_LIMIT_ATTRIBUTE, _UNSET)
    size = getattr(endpoint, MAX_BODY_ATTRIBUTE, _UNSET)
    if limit is _UNSET and size is _UNSET:
        return None
    return RouteOptions(bucket=path, rate_limit=limit, max_body=size)


def _endpoints(route: Route) -> list[Any]:
    """The functions of a route: the endpoint, or an endpoint class's method functions."""
    endpoint = route.endpoint
    if isinstance(endpoint, type):
        return [endpoint] + [
            getattr(endpoint, method.lower())
            for method in ("get", "post", "put", "patch", "delete")
            if hasattr(endpoint, method)
        ]
    return [endpoint]


_Entry = tuple[Any, RouteOptions | None, "RouteOptionsTable | None"]


class RouteOptionsTable:
    """Finds the options of the route a request is for, before the router runs.

    Only built when some route has options, and it holds only those routes, plus any route
    the router would try before one of them that a request could match as well (found as
    the plugin registry finds colliding routes): the route found is the one Starlette will
    pick. Routes are indexed by their first path segment, so a request tries only routes
    that could match it. The answer is kept in the scope for the next stage.
    """

    def __init__(self, candidates: list[_Entry], *, indexed: bool) -> None:
        self.candidates = candidates  # (route, its options, a nested table for a mount)
        self._index: dict[str, list[_Entry]] | None = None
        self._anywhere = candidates
        if indexed:
            segments = {_first_segment(entry[0]) for entry in candidates}
            self._anywhere = [entry for entry in candidates if _first_segment(entry[0]) is None]
            self._index = {
                segment: [e for e in candidates if _first_segment(e[0]) in (segment, None)]
                for segment in segments
                if segment is not None
            }

    @classmethod
    def build(
        cls, routes: Sequence[Any], prefix: str = "", *, top: bool = True
    ) -> RouteOptionsTable | None:
        entries: list[_Entry] = []
        for route in routes:
            options: RouteOptions | None = None
            nested = None
            if isinstance(route, Route):
                for endpoint in _endpoints(route):
                    options = options or _options_of(endpoint, prefix + route.path)
            elif isinstance(route, Mount) and route.routes:
                nested = cls.build(route.routes, prefix + route.path, top=False)
            entries.append((route, options, nested))
        keep: set[int] = set()
        for index, (route, options, nested) in enumerate(entries):
            if options is None and nested is None:
                continue
            keep.add(index)
            claims: dict[tuple[str, str], str] = dict.fromkeys(route_claims(route), "")
            for earlier in range(index):
                if find_conflict([entries[earlier][0]], claims) is not None:
                    keep.add(earlier)
        if not keep:
            return None
        return cls([entries[index] for index in sorted(keep)], indexed=top)

    def resolve(self, scope: Scope) -> RouteOptions | None:
        found = scope.get(_OPTIONS_KEY, _UNSET)
        if found is _UNSET:
            found = scope[_OPTIONS_KEY] = self._find(scope)
        return found  # type: ignore[no-any-return]

    def _find(self, scope: Scope) -> RouteOptions | None:
        entries = self._anywhere
        if self._index is not None:
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            entries = self._index.get(path[1:].partition("/")[0], entries)
        for route, options, nested in entries:
            match, child = route.matches(scope)
            if match is not Match.FULL:
                continue
            if nested is not None:
                return nested._find({**scope, **child})
            return options
        return None


def _first_segment(route: Any) -> str | None:
    """``api`` for ``/api/hello``; ``None`` when any first segment may match (a parameter,
    a mount at the root)."""
    path = str(getattr(route, "path", ""))
    if isinstance(route, Mount) and not path.strip("/"):
        return None
    segment = path.lstrip("/").partition("/")[0]
    return None if "{" in segment else segment


# -- body size limit -----------------------------------------------------------------------


class PayloadTooLarge(APIError):
    """Raised from ``receive`` when a streamed body passes its limit: handlers (and the
    stage itself, when a handler lets it through) answer ``413``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than the limit of {limit} bytes",
            "payload_too_large",
            limit=limit,
        )
        self.limit = limit

    def response(self) -> JSONResponse:
        return error_response(self.status_code, self.message, self.code, None, **self.details)


class BodyLimit:
    """The ``body_limit`` stage."""

    __slots__ = ("app", "default", "options")

    def __init__(self, app: ASGIApp, default: int, options: RouteOptionsTable | None) -> None:
        self.app = app
        self.default = default  # 0: no limit
        self.options = options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.default
        if self.options is not None:
            found = self.options.resolve(scope)
            if found is not None and found.has_max_body:
                limit = found.max_body or 0
        if not limit:
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0  # the server refuses a malformed length before we run
                if length > limit:
                    await PayloadTooLarge(limit).response()(scope, receive, send)
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if not chunked:
            # The server delivers no more than Content-Length, and no body without one.
            await self.app(scope, receive, send)
            return
        await self._counted(limit, scope, receive, send)

    async def _counted(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except PayloadTooLarge as exc:
            if started:  # the handler had answered already; nothing more can be said
                return
            await exc.response()(scope, receive, send)


# -- building ------------------------------------------------------------------------------


@attrs.define
class PipelineContext:
    """What the stages are built from, for one routing generation."""

    platform: Platform
    routes: list[Any]
    plugin_middleware: list[Middleware]
    exception_handlers: Mapping[Any, Callable[..., Any]]
    limiter: RateLimiter
    options: RouteOptionsTable | None = None


def _body_limit(app: ASGIApp, context: PipelineContext) -> ASGIApp | None:
    default = int(context.platform.config.get("gateway.max_body_bytes") or 0)
    options = context.options
    if default:  # routes that say anything about sizes matter, "no limit" included
        sizes = options is not None and _any_option(options, lambda o: o.has_max_body)
    else:  # only routes with a limit of their own do
        sizes = options is not None and _any_option(options, lambda o: bool(o.max_body))
        if not sizes:
            return None
    return BodyLimit(app, default, options if sizes else None)


class CrossOrigin:
    """The ``cors`` stage: Starlette's ``CORSMiddleware`` for requests that carry an
    ``Origin`` header. The others (API clients, same-origin page loads) are none of its
    business, and skip it: looking for one header costs less than its ``Headers`` object."""

    __slots__ = ("app", "cors")

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, _ in scope["headers"]:
                if name == b"origin":
                    await self.cors(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _cors(app: ASGIApp, context: PipelineContext) -> ASGIApp | None:
    config = context.platform.config
    origins = list(config.get("gateway.cors.allow_origins") or [])
    regex = str(config.get("gateway.cors.allow_origin_regex") or "") or None
    if not origins and regex is None:
        return None
    return CrossOrigin(
        app,
        allow_origins=origins,
        allow_origin_regex=regex,
        allow_methods=list(config.get("gateway.cors.allow_methods") or []),
        allow_headers=list(config.get("gateway.cors.allow_headers") or []),
        allow_credentials=bool(config.get("gateway.cors.allow_credentials")),
        expose_headers=list(config.get("gateway.cors.expose_headers") or []),
        max_age=int(config.get("gateway.cors.max_age")),
    )


def default_limit(platform: Platform) -> Limit | None:
    """``gateway.rate_limit.requests`` per ``gateway.rate_limit.period`` seconds, if set."""
    config = platform.config
    requests = int(config.get("gateway.rate_limit.requests") or 0)
    if requests <= 0:
        return None
    period = float(config.get("gateway.rate_limit.period"))
    unit = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}.get(period)
    text = f"{requests}/{unit}" if unit else f"{requests}/{period:g}s"
    return Limit(requests, period, text)


def _rate_limit(app: ASGIApp, context: PipelineContext) -> ASGIApp | None:
    default = default_limit(context.platform)
    options = context.options
    if default is not None:  # routes with a limit of their own, or none, matter
        limits = options is not None and _any_option(options, lambda o: o.has_rate_limit)
    else:  # only routes with a limit of their own do
        limits = options is not None and _any_option(
            options, lambda o: o.has_rate_limit and o.rate_limit is not None
        )
        if not limits:
            return None
    return RateLimit(app, context.limiter, default, options if limits else None)


def _auth(app: ASGIApp, context: PipelineContext) -> ASGIApp | None:
    return Authentication(app, context.platform)


def _plugins(app: ASGIApp, context: PipelineContext) -> ASGIApp | None:
    entries = context.plugin_middleware
    if not entries:
        return None
    for cls, args, kwargs in reversed(entries):
        app = cls(app, *args, **kwargs)
    # What plugin middleware raises (an APIError from an auth check) becomes a JSON error.
    return ExceptionMiddleware(app, handlers=dict(context.exception_handlers))


def _any_option(table: RouteOptionsTable, wanted: Callable[[RouteOptions], bool]) -> bool:
    for _, options, nested in table.candidates:
        if options is not None and wanted(options):
            return True
        if nested is not None and _any_option(nested, wanted):
            return True
    return False


BUILDERS: dict[str, Callable[[ASGIApp, PipelineContext], ASGIApp | None]] = {
    "body_limit": _body_limit,
    "cors": _cors,
    "rate_limit": _rate_limit,
    "auth": _auth,
    "plugins": _plugins,
}


def build_pipeline(app: ASGIApp, context: PipelineContext) -> tuple[ASGIApp, list[str]]:
    """``app`` wrapped in the stages of ``gateway.middleware`` (first = outermost); also
    the names of the stages present in this generation, outermost first."""
    order = check_order(context.platform.config.get("gateway.middleware") or [])
    context.options = RouteOptionsTable.build(context.routes)
    active: list[str] = []
    for name in reversed(order):
        wrapped = BUILDERS[name](app, context)
        if wrapped is not None:
            app = wrapped
            active.append(name)
    return app, active[::-1]
