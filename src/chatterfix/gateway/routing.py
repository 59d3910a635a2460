"""A routing generation: one built gateway application and the requests it is serving.

Everything the gateway does per request before Starlette sees it happens in one pure-ASGI
layer, :class:`Routing`: count the request (so a swap can drain), give it a request id,
set the request's context variables, and make sure an unhandled error still ends with a
JSON answer. One layer instead of three keeps the per-request overhead small.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatterfix.context import current_platform, current_request_id, serving_routing
from chatterfix.gateway.errors import internal_error

if TYPE_CHECKING:
    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.gateway")

REQUEST_ID_HEADER = b"x-request-id"
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

    __slots__ = ("_idle", "app", "exempt", "ids", "in_flight", "platform")

    def __init__(self, app: ASGIApp, platform: Any, ids: RequestIds) -> None:
        self.app = app
        self.platform = platform
        self.ids = ids
        self.in_flight = 0
        self.exempt = 0
        self._idle: anyio.Event | None = None

    @property
    def busy(self) -> int:
        return self.in_flight - self.exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and _VALID_ID.fullmatch(value):
                request_id = value.decode("latin-1")
                break
        if request_id is None:
            request_id = self.ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        self.in_flight += 1
        tokens = (
            serving_routing.set(self),
            current_platform.set(self.platform),
            current_request_id.set(request_id),
        )
        try:
            await self.app(scope, receive, send_with_id)
        except (Exception, SystemExit):
            # SystemExit too: a handler calling sys.exit() must not stop the server.
            # Starlette has already answered with the JSON 500 of our exception handler
            # when it could; here the error is logged once, and never re-raised to the
            # server unless the response was cut short.
            logger.exception("unhandled error in %s %s", scope.get("method"), scope["path"])
            if not started and scope["type"] == "http":
                await internal_error()(scope, receive, send_with_id)
        finally:
            current_request_id.reset(tokens[2])
            current_platform.reset(tokens[1])
            serving_routing.reset(tokens[0])
            self.in_flight -= 1
            self._signal()

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
