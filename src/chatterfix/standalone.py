"""Run one app as its own service, registered with a gateway's service discovery.

``python -m my_app`` (or ``python main.py``) in an app made by ``chatterfix create-app``
calls :func:`run`. The app is served by a platform of its own holding just that plugin, with
the same paths as in the gateway (``/api/<name>/...``, ``/health``), under uvicorn. While it
serves, a :class:`Registrar` registers it with the gateway (``POST /platform/services``),
renews the registration before its time-to-live runs out, and withdraws it on shutdown
(``DELETE /platform/services/<name>``). A gateway that has no service discovery (``404``),
refuses the registration, or cannot be reached is reported once in the log and tried again
later: the app keeps serving whatever the gateway says.

Settings come from arguments, else from the environment:

========================  ==============================================================
``PORT``                  port to listen on (default: the manifest's ``port``, else 8000)
``HOST``                  address to bind (default ``127.0.0.1``; ``0.0.0.0`` in containers)
``CHATTERFIX_GATEWAY_URL`` gateway to register with (default ``http://127.0.0.1:8000``;
                          ``off`` or empty: no registration)
``CHATTERFIX_SERVICE_URL`` URL the gateway should use to reach this app (default: from the
                          host and port; the host name when bound to all addresses)
``CHATTERFIX_TOKEN``      API token sent with the registration (``Authorization: Bearer``)
``CHATTERFIX_HEARTBEAT``  seconds between renewals (default 10; the time-to-live is three
                          times as long)
========================  ==============================================================
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import attrs

if TYPE_CHECKING:
    import httpx

    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.standalone")

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_HEARTBEAT = 10.0
SERVICES_PATH = "/platform/services"
OFF_WORDS = {"", "0", "off", "no", "false", "none"}


@attrs.frozen(kw_only=True)
class Registration:
    """What a service tells the gateway about itself: the body of ``POST /platform/services``
    (the fields of :class:`~chatterfix.ServiceEndpoint` plus ``ttl``, in seconds)."""

    name: str
    url: str
    port: int | None = None
    health_endpoint: str = "/health"
    ttl: float = 3 * DEFAULT_HEARTBEAT
    metadata: dict[str, str] = attrs.field(factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "port": self.port,
            "health_endpoint": self.health_endpoint,
            "ttl": self.ttl,
            "metadata": dict(self.metadata),
        }


class Registrar:
    """Keeps one service registered with one gateway for as long as :meth:`run` runs.

    ``state`` is ``pending`` before the first attempt, then ``registered``, ``unavailable``
    (the gateway has no service discovery), ``refused`` (401/403/4xx) or ``unreachable``.
    Each change of state is logged once; repeating the same failure is not.
    """

    def __init__(
        self,
        gateway_url: str,
        registration: Registration,
        *,
        token: str | None = None,
        interval: float = DEFAULT_HEARTBEAT,
        retry_interval: float | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.registration = registration
        self.token = token
        self.interval = interval
        self.retry_interval = retry_interval if retry_interval is not None else 3 * interval
        self._client = client
        self.state = "pending"
        self.last_error = ""
        self.renewals = 0

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _client_or_new(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0)
        return self._client

    def _change(self, state: str, message: str, *args: Any) -> None:
        if state != self.state:
            level = logging.INFO if state == "registered" else logging.WARNING
            logger.log(level, message, *args)
        self.state = state

    async def register_once(self) -> bool:
        """One registration (or renewal). True when the gateway accepted it."""
        import httpx

        url = self.gateway_url + SERVICES_PATH
        name = self.registration.name
        try:
            response = await self._client_or_new().post(
                url, json=self.registration.body(), headers=self._headers
            )
        except httpx.HTTPError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._change(
                "unreachable",
                "gateway %s cannot be reached (%s); %s keeps serving, retrying every %.0f s",
                self.gateway_url,
                self.last_error,
                name,
                self.retry_interval,
            )
            return False
        if response.is_success:
            if self.state == "registered":
                self.renewals += 1
            self.last_error = ""
            self._change(
                "registered",
                "registered %s (%s) with the gateway %s",
                name,
                self.registration.url,
                self.gateway_url,
            )
            return True
        self.last_error = f"{response.status_code} {response.text[:200]}"
        if response.status_code in (404, 405, 501):
            self._change(
                "unavailable",
                "gateway %s has no service discovery (%s %s answered %d); %s keeps serving, "
                "retrying every %.0f s",
                self.gateway_url,
                "POST",
                SERVICES_PATH,
                response.status_code,
                name,
                self.retry_interval,
            )
        else:
            hint = " (set CHATTERFIX_TOKEN)" if response.status_code in (401, 403) else ""
            self._change(
                "refused",
                "gateway %s refused the registration of %s: %s%s; retrying every %.0f s",
                self.gateway_url,
                name,
                self.last_error,
                hint,
                self.retry_interval,
            )
        return False

    async def deregister(self) -> None:
        """Withdraw the registration (``DELETE /platform/services/<name>?url=...``)."""
        import httpx

        name = urllib.parse.quote(self.registration.name, safe="")
        try:
            await self._client_or_new().delete(
                f"{self.gateway_url}{SERVICES_PATH}/{name}",
                params={"url": self.registration.url},
                headers=self._headers,
            )
        except httpx.HTTPError as exc:
            logger.debug("deregistration of %s failed: %s", self.registration.name, exc)
        else:
            logger.info("withdrew %s from the gateway %s", self.registration.name, self.gateway_url)

    async def run(self) -> None:
        """Register, then renew every ``interval`` seconds (retry every ``retry_interval``
        after a failure) until cancelled; then withdraw the registration if it was made."""
        try:
            while True:
                accepted = await self.register_once()
                await anyio.sleep(self.interval if accepted else self.retry_interval)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                if self.state == "registered":
                    await self.deregister()
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None


@attrs.frozen(kw_only=True)
class Settings:
    """Where the service listens and where it registers; see :func:`settings_from`."""

    name: str
    host: str
    port: int
    gateway_url: str | None
    service_url: str
    token: str | None
    heartbeat: float
    health_endpoint: str = "/health"
    metadata: dict[str, str] = attrs.field(factory=dict)


def _manifest_of(plugin: object) -> Any:
    from chatterfix.plugin_sources import code_candidates

    for candidate in code_candidates([plugin]):
        if isinstance(candidate, Exception):
            raise candidate
        return candidate.load().manifest
    raise ValueError(f"{plugin!r} is not a plugin")  # pragma: no cover - one object in


def settings_from(
    plugin: object,
    *,
    host: str | None = None,
    port: int | None = None,
    gateway_url: str | None = None,
    service_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings for serving ``plugin``: arguments first, then the environment, then
    the plugin's manifest (name, port, health endpoint, version, app type)."""
    env = os.environ if environ is None else environ
    manifest = _manifest_of(plugin)
    host = host or env.get("HOST") or DEFAULT_HOST
    if port is None:
        port = int(env["PORT"]) if env.get("PORT") else (manifest.port or DEFAULT_PORT)
    if gateway_url is None:
        gateway_url = env.get("CHATTERFIX_GATEWAY_URL", DEFAULT_GATEWAY_URL)
    if gateway_url.strip().lower() in OFF_WORDS:
        gateway_url = None
    if service_url is None:
        service_url = env.get("CHATTERFIX_SERVICE_URL") or ""
    if not service_url:
        reachable = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        if ":" in reachable:
            reachable = f"[{reachable}]"
        service_url = f"http://{reachable}:{port}"
    heartbeat = float(env.get("CHATTERFIX_HEARTBEAT") or DEFAULT_HEARTBEAT)
    return Settings(
        name=manifest.name,
        host=host,
        port=port,
        gateway_url=gateway_url,
        service_url=service_url.rstrip("/"),
        token=env.get("CHATTERFIX_TOKEN") or None,
        heartbeat=max(heartbeat, 0.1),
        health_endpoint=manifest.health_endpoint,
        metadata={
            "version": manifest.version,
            "app_type": manifest.app_type.value,
        },
    )


async def _until(condition: Callable[[], bool], interval: float = 0.02) -> None:
    """Wait until ``condition()`` holds: uvicorn's server has flags, not events."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but a flag
        await anyio.sleep(interval)


def _server(config: Any) -> Any:
    """A uvicorn server that, once stopped by SIGINT or SIGTERM, returns instead of raising
    the signal again, so that the registration is withdrawn and the process exits 0."""
    import uvicorn

    class StandaloneServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return StandaloneServer(config)


def build_platform(plugin: object, config: Any = None) -> Platform:
    """A platform serving only ``plugin`` (no built-in or installed plugins)."""
    from chatterfix.platform import Platform

    return Platform(config=config, plugins=[plugin], load_entrypoints=False, builtins=False)


async def serve(
    plugin: object,
    settings: Settings,
    *,
    config: Any = None,
    started: Callable[[Platform], Any] | None = None,
) -> None:
    """Serve ``plugin`` until uvicorn stops (Ctrl+C, SIGTERM), registered with the gateway
    while it serves. ``started`` is called with the platform once uvicorn listens."""
    import uvicorn

    platform = build_platform(plugin, config)
    server = _server(
        uvicorn.Config(
            platform.asgi_app,
            host=settings.host,
            port=settings.port,
            lifespan="on",
            log_config=None,
            log_level=None,
            access_log=False,
        )
    )
    registrar = None
    if settings.gateway_url:
        registrar = Registrar(
            settings.gateway_url,
            Registration(
                name=settings.name,
                url=settings.service_url,
                port=settings.port,
                health_endpoint=settings.health_endpoint,
                ttl=3 * settings.heartbeat,
                metadata=settings.metadata,
            ),
            token=settings.token,
            interval=settings.heartbeat,
        )

    async def register_when_listening() -> None:
        await _until(lambda: bool(server.started or server.should_exit))
        if not server.started:
            return
        logger.info(
            "%s serving on http://%s:%d (as %s)",
            settings.name,
            settings.host,
            settings.port,
            settings.service_url,
        )
        if started is not None:
            started(platform)
        if registrar is None:
            return
        async with anyio.create_task_group() as registration:
            registration.start_soon(registrar.run)
            # Withdraw as soon as the server begins to stop (Ctrl+C, SIGTERM), so that the
            # gateway stops sending requests while the last ones are being answered.
            await _until(lambda: bool(server.should_exit))
            registration.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(register_when_listening)
        await server.serve()
        group.cancel_scope.cancel()
    if not server.started:
        raise SystemExit(3)  # uvicorn has logged why (the port is taken, say)


def run(
    plugin: object,
    *,
    host: str | None = None,
    port: int | None = None,
    gateway_url: str | None = None,
    service_url: str | None = None,
    config: Any = None,
) -> None:
    """Serve ``plugin`` as its own service (blocking), registered with the gateway; the
    body of an app's ``python -m <name>``. Arguments override the environment."""
    from chatterfix.config import Config
    from chatterfix.services.logging import configure_logging

    resolved = config if isinstance(config, Config) else Config(config)
    configure_logging(resolved)
    if "httpx" not in (resolved.get("logging.levels") or {}):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per renewal otherwise
    settings = settings_from(
        plugin, host=host, port=port, gateway_url=gateway_url, service_url=service_url
    )
    anyio.run(functools.partial(serve, plugin, settings, config=resolved))
