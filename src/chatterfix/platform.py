"""The Platform: owns config, plugins, events and services, and runs one lifespan."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from chatterfix import __version__
from chatterfix.config import Config
from chatterfix.context import current_platform
from chatterfix.events import durable as durable_events
from chatterfix.events.bus import EventBus, RetryPolicy
from chatterfix.events.transports import Transport, default_group, transport_for
from chatterfix.permissions import PLATFORM_PERMISSIONS
from chatterfix.plugins import PluginRecord, PluginRegistry, PluginState, iso_utc
from chatterfix.seed import enter_platform, leave_platform

if TYPE_CHECKING:
    import sqlalchemy

    from chatterfix.gateway.app import Gateway
    from chatterfix.gateway.metrics import Metrics
    from chatterfix.gateway.proxy import UpstreamPool
    from chatterfix.services.ai.service import AIService
    from chatterfix.services.auth import AuthService
    from chatterfix.services.database import Database
    from chatterfix.services.discovery import ServiceDiscovery

logger = logging.getLogger("chatterfix.platform")


class ServiceNotAvailable(RuntimeError):
    """A shared service that this version of the platform does not provide yet."""


@attrs.frozen
class Permission:
    name: str
    description: str
    plugin: str


class Platform:
    """The embedding API.

    ``Platform(config=..., plugins=[...], load_entrypoints=True, plugins_dir=None)`` finds and
    imports plugins at once; ``async with platform:`` starts them (in dependency order) and
    stops them; ``platform.asgi_app`` is the Starlette gateway, whose ASGI lifespan does the
    same ``async with`` when served by uvicorn.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        plugins: Iterable[object] = (),
        *,
        load_entrypoints: bool = True,
        plugins_dir: str | Path | None = None,
        builtins: bool = True,
    ) -> None:
        # Config checks every layer against the schema as it loads it.
        self.config = config if isinstance(config, Config) else Config(config)
        self.events = EventBus(
            history_size=int(self.config.get("events.history_size")),
            retry=RetryPolicy(
                attempts=max(1, int(self.config.get("events.retry_attempts"))),
                backoff=float(self.config.get("events.retry_backoff")),
            ),
            max_payload_bytes=int(self.config.get("events.max_payload_bytes")),
        )
        self.permissions: dict[str, Permission] = {
            name: Permission(name, description, "platform")
            for name, description in PLATFORM_PERMISSIONS.items()
        }
        self.ai_providers: dict[str, Any] = {}
        self._owners: dict[tuple[str, str], PluginRecord] = {}
        self._table_owners: dict[str, str] = {}
        self._metadata: sqlalchemy.MetaData | None = None
        self._gateway: Gateway | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._consumer: anyio.CancelScope | None = None
        self._consumer_stopped: anyio.Event | None = None
        self._database: Database | None = None
        self._ai: AIService | None = None
        self._auth: AuthService | None = None
        self._discovery: ServiceDiscovery | None = None
        self._upstreams: UpstreamPool | None = None
        self.started = False
        self.started_at: datetime | None = None
        self._started_monotonic = time.monotonic()
        folder = plugins_dir if plugins_dir is not None else self.config.get("plugins.dir")
        self.plugins_dir = Path(folder) if folder else None
        self.plugins = PluginRegistry(self)
        self.plugins.discover(
            builtins=builtins,
            entrypoints=load_entrypoints,
            plugins_dir=self.plugins_dir,
            objects=plugins,
        )

    # -- identity and services -------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.config.get("platform.name"))

    @property
    def version(self) -> str:
        return __version__

    @property
    def uptime(self) -> float:
        return round(time.monotonic() - self._started_monotonic, 3) if self.started else 0.0

    def get_logger(self, name: str) -> logging.Logger:
        """A logger for a plugin or component, below the ``chatterfix`` logger.

        Asked for while a plugin's code runs (its import, a hook, an event handler), a new
        logger is attributed to that plugin: its records name the plugin even when emitted
        outside plugin code, from a thread of the plugin's own for instance.
        """
        from chatterfix.services.logging import attribute_logger

        full_name = name if name.startswith("chatterfix") else f"chatterfix.{name}"
        attribute_logger(full_name)
        return logging.getLogger(full_name)

    @property
    def metadata(self) -> sqlalchemy.MetaData:
        """The shared SQLAlchemy metadata that ``register_models`` fills."""
        if self._metadata is None:
            import sqlalchemy

            self._metadata = sqlalchemy.MetaData()
        return self._metadata

    @property
    def database(self) -> Database:
        """The shared database (SQLite under ``platform.data_dir`` unless ``database.url``
        or ``DATABASE_URL`` names another). Created on first use; nothing connects until a
        query runs."""
        if self._database is None:
            from chatterfix.services.database import database_for

            self._database = database_for(self.config)
        return self._database

    @property
    def auth(self) -> AuthService:
        """Users, roles, permissions and API tokens, stored in the shared database."""
        if self._auth is None:
            from chatterfix.services.auth import AuthService

            self._auth = AuthService(lambda: self.database, self.config)
        return self._auth

    @property
    def ai(self) -> AIService:
        """Text, streams, image findings, voice-to-work-order and embeddings over the
        providers: the built-in ones and those of ``register_ai_providers``."""
        if self._ai is None:
            from chatterfix.services.ai.service import AIService

            self._ai = AIService.for_platform(self)
        return self._ai

    @property
    def discovery(self) -> ServiceDiscovery:
        """Service discovery: the instances of remote apps and registered services, their
        health checks and load balancing (``discovery.*`` in the configuration)."""
        if self._discovery is None:
            from chatterfix.services.discovery import ServiceDiscovery

            self._discovery = ServiceDiscovery(self)
        return self._discovery

    @property
    def upstreams(self) -> UpstreamPool:
        """The reverse proxy's connection pool to service instances (opened on first need,
        closed when the platform stops)."""
        if self._upstreams is None:
            from chatterfix.gateway.proxy import ProxySettings, UpstreamPool

            self._upstreams = UpstreamPool(ProxySettings.from_config(self.config))
        return self._upstreams

    # -- contributions from plugins --------------------------------------------------------

    def add_permissions(self, owner: PluginRecord, permissions: Mapping[str, str]) -> None:
        for name, description in permissions.items():
            known = self.permissions.get(name)
            self.permissions[name] = Permission(
                name, description or (known.description if known else ""), owner.name
            )
            self._owners["permission", name] = owner

    def add_ai_providers(self, owner: PluginRecord, providers: Any) -> None:
        items = providers if isinstance(providers, list | tuple) else [providers]
        for provider in items:
            if provider is None:
                continue
            name = getattr(provider, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"an AI provider needs a non-empty 'name', got {provider!r}")
            holder = self._owners.get(("ai_provider", name))
            if name in self.ai_providers and holder is not None and holder.name != owner.name:
                raise ValueError(f"AI provider {name!r} is already provided by {holder.name!r}")
            self.ai_providers[name] = provider
            self._owners["ai_provider", name] = owner

    def release_tables(self, plugin: str) -> list[sqlalchemy.Table]:
        """Take ``plugin``'s tables out of the metadata so its ``register_models`` can run
        again (on start after a stop, or on reload); returns them for :meth:`restore_tables`.
        """
        released: list[sqlalchemy.Table] = []
        for name in [table for table, owner in self._table_owners.items() if owner == plugin]:
            released.append(self.metadata.tables[name])
            self.metadata.remove(self.metadata.tables[name])
            del self._table_owners[name]
        return released

    def claim_tables(self, plugin: str, names: Iterable[str]) -> None:
        for name in names:
            self._table_owners[name] = plugin

    def restore_tables(self, plugin: str, tables: list[sqlalchemy.Table]) -> None:
        """Undo a failed start: drop what it defined, put the released tables back."""
        self.release_tables(plugin)
        if not tables:
            return
        for table in tables:
            table.to_metadata(self.metadata)
        self.claim_tables(plugin, [table.name for table in tables])

    def contributions_of(self, plugin: str) -> list[tuple[str, str, Any, PluginRecord]]:
        """A snapshot of what ``plugin`` contributed, for :meth:`restore_contributions`."""
        return [
            (kind, name, self._registry(kind)[name], holder)
            for (kind, name), holder in self._owners.items()
            if holder.name == plugin
        ]

    def restore_contributions(
        self, plugin: str, saved: list[tuple[str, str, Any, PluginRecord]]
    ) -> None:
        """Put back a snapshot (a reload failed: the previous generation keeps serving)."""
        for kind, name, value, holder in saved:
            self._registry(kind)[name] = value
            self._owners[kind, name] = holder

    def _registry(self, kind: str) -> dict[str, Any]:
        return self.permissions if kind == "permission" else self.ai_providers

    def remove_contributions(self, owner: PluginRecord) -> None:
        """Drop what ``owner`` (one plugin generation) contributed and still holds."""
        for kind, name in [key for key, holder in self._owners.items() if holder is owner]:
            del self._owners[kind, name]
            self._registry(kind).pop(name, None)
        self.config.unwatch_owner(owner)

    # -- gateway ---------------------------------------------------------------------------

    @property
    def asgi_app(self) -> Gateway:
        """The gateway as an ASGI application (Starlette inside)."""
        if self._gateway is None:
            from chatterfix.gateway.app import Gateway

            self._gateway = Gateway(self)
        return self._gateway

    @property
    def metrics(self) -> Metrics:
        """The gateway's metrics (``GET /metrics``); ``metrics.registry`` is this platform's
        own ``prometheus_client.CollectorRegistry``, for plugins to add theirs."""
        return self.asgi_app.metrics

    def routes_changed(self) -> object | None:
        """Rebuild the gateway's routing after a plugin change; returns the previous one."""
        if self._discovery is not None:  # remote apps started or stopped
            self._discovery.sync_plugins()
        return self._gateway.rebuild() if self._gateway is not None else None

    async def drain(self, previous: object | None) -> None:
        """Wait (bounded) until requests served by a previous routing have finished."""
        if self._gateway is not None and previous is not None:
            await self._gateway.drain(previous, float(self.config.get("plugins.drain_timeout")))

    def reserved_route_claims(self) -> list[tuple[str, str]]:
        from chatterfix.gateway.api import reserved_claims

        return reserved_claims()

    # -- lifespan --------------------------------------------------------------------------

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        """Make this platform the one the seed-compatible proxies resolve to."""
        token = current_platform.set(self)
        try:
            yield
        finally:
            current_platform.reset(token)

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``function`` in the platform's task group (cancelled at shutdown)."""
        if self._task_group is None:
            raise RuntimeError("the platform is not running (use `async with platform:`)")
        self._task_group.start_soon(function, *args)

    async def __aenter__(self) -> Platform:
        if self.started:
            return self
        stack = contextlib.AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        self._exit_stack = stack
        enter_platform(self)
        self.started_at = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        try:
            await durable_events.open_history(self)
            await self.discovery.start(self._task_group)
            with self.activated():
                await self.plugins.start_all_plugins()
            if self.discovery.names():
                await self.upstreams.open()
            await self._connect_events()
            await durable_events.start(
                self, self._task_group, database_used=self._database is not None
            )
        except BaseException:
            with anyio.CancelScope(shield=True), self.activated():
                await self.plugins.stop_all_plugins()
            await self._close()
            raise
        self.started = True
        if self.config.get("platform.watch_config"):
            self.spawn(self._follow_config)
        total = len(self.plugins.records)
        logger.info(
            "platform started: %d of %d plugins running", len(self.plugins.running()), total
        )
        return self

    async def _follow_config(self) -> None:
        with self.activated():  # watchers may use the seed-compatible proxies
            await self.config.follow_file(float(self.config.get("platform.watch_interval")))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.started:
            return
        try:
            if self._consumer is not None:
                self._consumer.cancel()  # unacknowledged events stay with the broker
            with self.activated():
                await self.plugins.stop_all_plugins()
        finally:
            self.started = False
            await self._close()

    async def _connect_events(self) -> None:
        """Join the broker named by ``events.backend``, once the plugins have subscribed."""
        transport = transport_for(
            str(self.config.get("events.backend")),
            group=str(self.config.get("events.group"))
            or default_group(self.config.get("gateway.port")),
            stream=str(self.config.get("events.stream")),
            claim_idle=float(self.config.get("events.claim_idle")),
        )
        if transport is None:
            return
        await transport.open()
        self.events.transport = transport
        assert self._task_group is not None
        await self._task_group.start(self._consume_events, transport)

    async def _consume_events(
        self, transport: Transport, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        stopped = self._consumer_stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope, self.activated():
                self._consumer = scope
                await transport.consume(self.events.receive, task_status=task_status)
        finally:
            stopped.set()

    async def _close(self) -> None:
        leave_platform(self)
        with anyio.CancelScope(shield=True):  # the outbox relay, then the history's last writes
            await durable_events.close(self)
        transport, self.events.transport = self.events.transport, None
        if transport is not None:
            with anyio.CancelScope(shield=True):
                if self._consumer is not None and self._consumer_stopped is not None:
                    self._consumer.cancel()
                    with anyio.move_on_after(5):  # the client must not close under it
                        await self._consumer_stopped.wait()
                await transport.aclose()
        self._consumer = self._consumer_stopped = None
        if self._discovery is not None:  # health checks, then the shared registry
            with anyio.CancelScope(shield=True):
                await self._discovery.aclose()
        if self._upstreams is not None:  # the proxy's connections
            with anyio.CancelScope(shield=True):
                await self._upstreams.aclose()
        if self._database is not None:
            with anyio.CancelScope(shield=True):
                await self._database.aclose()
        if self._ai is not None:  # the providers' HTTP connections
            with anyio.CancelScope(shield=True):
                await self._ai.aclose()
        if self._gateway is not None:  # the rate limiter's connections
            with anyio.CancelScope(shield=True):
                await self._gateway.aclose()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        if self._exit_stack is not None:
            await self._exit_stack.aclose()
        self._task_group = self._exit_stack = None

    # -- reports ---------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """Overall health from the plugins meant to run: ``healthy`` when all of them are,
        ``unhealthy`` when none of them is healthy or degraded, ``degraded`` in between."""
        plugins = await self.plugins.check_health()
        statuses = [plugins[record.name]["status"] for record in self._expected_up()]
        if all(s == "healthy" for s in statuses):
            status = "healthy"
        elif all(s == "unhealthy" for s in statuses):
            status = "unhealthy"
        else:
            status = "degraded"
        return {
            "status": status,
            "gateway": "ChatterFix Platform Gateway",
            "version": self.version,
            "timestamp": _utc_now(),
            "plugins": plugins,
        }

    async def status(self) -> dict[str, Any]:
        """The seed's ``/platform/status`` document."""
        health = await self.plugins.check_health()
        plugins = {
            name: {
                "status": record.state.value,
                "error_message": record.error_message,
                "last_heartbeat": iso_utc(record.last_heartbeat),
                "health": health.get(name, {}).get("status", "unknown"),
                "version": record.manifest.version,
            }
            for name, record in self.plugins.records.items()
        }
        services = self._expected_up()
        healthy = sum(
            1
            for r in services
            if r.state is PluginState.RUNNING and health[r.name]["status"] != "unhealthy"
        )
        total = len(services)
        if self._discovery is not None:  # each instance of a remote app or service counts
            instances, healthy_instances = self._discovery.counts()
            total += instances
            healthy += healthy_instances
        return {
            "platform": {"name": self.name, "version": self.version, "uptime": self.uptime},
            "plugins": plugins,
            "services": {
                "total_services": total,
                "healthy_services": healthy,
                "unhealthy_services": total - healthy,
                "availability_percentage": round(100.0 * healthy / total, 2) if total else 100.0,
            },
            "load_errors": self.load_errors_view(),
        }

    def _expected_up(self) -> list[PluginRecord]:
        """Plugins meant to be serving: stopped or never-started ones are not failing, and
        remote apps are counted by their instances in service discovery."""
        return [
            record
            for record in self.plugins.records.values()
            if record.state in (PluginState.RUNNING, PluginState.STARTING, PluginState.ERROR)
            and not record.is_remote
        ]

    @property
    def shows_tracebacks(self) -> bool:
        """Tracebacks reach API clients only in debug mode; they are always in the log."""
        return bool(self.config.get("platform.debug"))

    def load_errors_view(self) -> list[dict[str, Any]]:
        """Load errors as API clients see them."""
        show = self.shows_tracebacks
        return [
            {**attrs.asdict(error), "traceback": error.traceback if show else ""}
            for error in self.plugins.load_errors
        ]


def _utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
