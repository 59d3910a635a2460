"""A routing generation: one built gateway application and the requests it is serving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from chatterfix.context import serving_routing


class Routing:
    """One built generation of the gateway, counting the requests it is serving.

    Requests that manage plugins (start, stop, reload) mark themselves *exempt*: a drain
    waiting for this generation's traffic to end must not wait for them, since they may
    themselves be waiting for the drain.
    """

    __slots__ = ("_idle", "app", "exempt", "in_flight")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self.exempt = 0
        self._idle: anyio.Event | None = None

    @property
    def busy(self) -> int:
        return self.in_flight - self.exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.in_flight += 1
        token = serving_routing.set(self)
        try:
            await self.app(scope, receive, send)
        finally:
            serving_routing.reset(token)
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
