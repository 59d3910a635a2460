"""``platform.discovery``: the service registry, its health checks and its load balancing.

Instances come from three places: remote apps' manifests (``url``/``port``), registrations
from Python (:meth:`ServiceDiscovery.register_service`) and registrations over REST
(``/platform/services``, which apps running on their own renew as heartbeats). Each
instance is checked actively (``GET`` of its ``health_endpoint`` every
``discovery.health_interval`` seconds, with a timeout, retries and backoff) and passively
(the reverse proxy reports connection failures and bursts of 5xx answers, which eject the
instance at once; an active check re-admits it). Registrations with a time-to-live that are
not renewed in time drop out.

All background work runs in one task group inside the platform's: it starts with the
platform and is cancelled when the platform stops.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from chatterfix.events.catalog import SystemEvents
from chatterfix.services.discovery.model import (
    NAME_PATTERN,
    SOURCES,
    STRATEGIES,
    Instance,
    RegistrationError,
    Service,
    instance_from,
    instance_key,
    normalize_url,
)
from chatterfix.services.discovery.store import Health, RedisStore, Snapshot

if TYPE_CHECKING:
    import httpx

    from chatterfix.config import Config
    from chatterfix.platform import Platform
    from chatterfix.service_endpoint import ServiceEndpoint

logger = logging.getLogger("chatterfix.discovery")

MAX_EJECTION_DOUBLINGS = 3  # a repeated ejection lasts up to 8 times discovery.ejection_time


@attrs.frozen(kw_only=True)
class DiscoverySettings:
    """The ``discovery.*`` configuration, read once when the platform builds the service."""

    backend: str = "memory"
    prefix: str = "chatterfix:discovery"
    sync_interval: float = 1.0
    balancing: str = "round_robin"
    balancing_by_service: dict[str, str] = attrs.field(factory=dict)
    health_interval: float = 5.0
    health_timeout: float = 2.0
    health_retries: int = 2
    health_backoff: float = 0.2
    health_max_interval: float = 30.0
    unhealthy_threshold: int = 1
    healthy_threshold: int = 1
    eject_5xx: int = 5
    ejection_time: float = 5.0
    default_ttl: float = 0.0
    latency_window: int = 1024

    @classmethod
    def from_config(cls, config: Config) -> DiscoverySettings:
        def get(key: str) -> Any:
            return config.get(f"discovery.{key}")

        balancing = str(get("balancing"))
        by_service = {str(k): str(v) for k, v in (get("balancing_by_service") or {}).items()}
        for name, strategy in [("discovery.balancing", balancing), *by_service.items()]:
            if strategy not in STRATEGIES:
                raise ValueError(
                    f"{name}: {strategy!r} is not a load-balancing strategy "
                    f"({', '.join(STRATEGIES)})"
                )
        return cls(
            backend=str(get("backend")),
            prefix=str(get("prefix")),
            sync_interval=float(get("sync_interval")),
            balancing=balancing,
            balancing_by_service=by_service,
            health_interval=float(get("health_interval")),
            health_timeout=float(get("health_timeout")),
            health_retries=int(get("health_retries")),
            health_backoff=float(get("health_backoff")),
            health_max_interval=float(get("health_max_interval")),
            unhealthy_threshold=max(1, int(get("unhealthy_threshold"))),
            healthy_threshold=max(1, int(get("healthy_threshold"))),
            eject_5xx=int(get("eject_5xx")),
            ejection_time=float(get("ejection_time")),
            default_ttl=float(get("default_ttl")),
            latency_window=int(get("latency_window")),
        )


class ServiceDiscovery:
    """The registry of service instances; ``platform.discovery``.

    Read methods (:meth:`choose`, :meth:`stats`, :meth:`services`) are plain functions on
    in-memory state. With ``discovery.backend = "redis://..."`` registrations and health are
    also written to Redis and read back every ``discovery.sync_interval`` seconds, so that
    every replica of the gateway routes to the same instances.
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.settings = DiscoverySettings.from_config(platform.config)
        self._services: dict[str, Service] = {}
        backend = self.settings.backend
        self._store: RedisStore | None = None
        if backend.startswith(("redis://", "rediss://", "unix://")):
            self._store = RedisStore(backend, self.settings.prefix)
        elif backend != "memory":
            raise ValueError(f"discovery.backend: {backend!r} is not 'memory' or a redis:// URL")
        self._group: anyio.abc.TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        self._http: httpx.AsyncClient | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._version = -1
        self._resync = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._group is not None

    @property
    def shared(self) -> bool:
        """Whether the registry is shared with other replicas (a Redis backend)."""
        return self._store is not None

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Open the shared registry (if any), load it, and start the background work in
        ``task_group`` (the platform's)."""
        if self.running:
            return
        if self._store is not None:
            await self._store.open()
            await self._sync(await self._store.snapshot())
        await task_group.start(self._run)

    async def aclose(self) -> None:
        """Stop the background work and close the connections (the platform's stop)."""
        if self._scope is not None:
            self._scope.cancel()
            if self._stopped is not None:
                with anyio.move_on_after(5):
                    await self._stopped.wait()
        if self._http is not None:
            client, self._http = self._http, None
            await client.aclose()
        if self._store is not None:
            await self._store.aclose()

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as group:
                    self._group = group
                    self._wake = anyio.Event()
                    self._limiter = anyio.CapacityLimiter(32)
                    if self._store is not None:
                        group.start_soon(self._follow_store)
                    task_status.started()
                    await self._supervise(group)
        finally:
            self._group = self._scope = None
            self._stopped.set()

    async def _supervise(self, group: anyio.abc.TaskGroup) -> None:
        """Every tick: drop expired registrations, start the health checks that are due."""
        tick = max(0.01, min(0.25, self.settings.health_interval / 2))
        while True:
            self._expire_due(group)
            now = time.monotonic()
            for service in list(self._services.values()):
                for instance in list(service.instances.values()):
                    if not instance.checking and instance.next_check <= now:
                        instance.checking = True
                        group.start_soon(self._check, instance)
            wake = self._wake = anyio.Event()
            with anyio.move_on_after(tick):
                await wake.wait()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, function: Any, *args: Any) -> None:
        if self._group is not None:
            self._group.start_soon(function, *args)

    # -- lookups (the proxy's hot path) ------------------------------------------------------

    def service(self, name: str) -> Service | None:
        return self._services.get(name)

    def has(self, name: str) -> bool:
        service = self._services.get(name)
        return service is not None and bool(service.instances)

    def choose(self, name: str, exclude: Instance | None = None) -> Instance | None:
        """A healthy instance of ``name`` by the service's load-balancing strategy, other than
        ``exclude``; ``None`` when there is none."""
        service = self._services.get(name)
        return service.pick(exclude) if service is not None else None

    def names(self) -> list[str]:
        return sorted(name for name, service in self._services.items() if service.instances)

    # -- traffic accounting (called by the proxy) --------------------------------------------

    def record(self, instance: Instance, status: int, seconds: float) -> None:
        """An answer from ``instance``: its latency (to the response headers) and status.
        ``discovery.eject_5xx`` 5xx answers in a row eject the instance."""
        instance.latencies.add(seconds * 1000.0)
        if status >= 500:
            instance.errors += 1
            instance.consecutive_5xx += 1
            limit = self.settings.eject_5xx
            if limit and instance.consecutive_5xx >= limit and instance.healthy:
                self.eject(instance, f"{instance.consecutive_5xx} 5xx answers in a row")
        elif instance.consecutive_5xx:
            instance.consecutive_5xx = 0

    def failed(self, instance: Instance, reason: str, *, eject: bool = True) -> None:
        """A request to ``instance`` failed without an answer (connection error, timeout)."""
        instance.errors += 1
        if eject and instance.healthy:
            self.eject(instance, reason)

    def eject(self, instance: Instance, reason: str) -> None:
        """Take ``instance`` out of the rotation now (passive health checking). It comes back
        when an active check passes after ``discovery.ejection_time`` seconds (doubled for
        each ejection in a row, up to eight times)."""
        pause = self.settings.ejection_time * 2 ** min(instance.ejections, MAX_EJECTION_DOUBLINGS)
        instance.ejections += 1
        instance.ejected_until = time.time() + pause
        instance.next_check = time.monotonic() + pause
        instance.check_passes = 0
        instance.consecutive_5xx = 0
        self._set_health(instance, False, f"ejected: {reason}")

    # -- registration ------------------------------------------------------------------------

    async def register_service(
        self,
        endpoint: ServiceEndpoint,
        *,
        ttl: float | None = None,
        strip_prefix: bool | None = None,
    ) -> Instance:
        """Register a :class:`~chatterfix.ServiceEndpoint` (the seed's call)."""
        instance, _ = await self.register(
            endpoint.name,
            endpoint.url,
            port=endpoint.port,
            health_endpoint=endpoint.health_endpoint,
            weight=endpoint.weight,
            metadata=dict(endpoint.metadata),
            ttl=ttl,
            strip_prefix=endpoint.strip_prefix if strip_prefix is None else strip_prefix,
        )
        return instance

    async def register(
        self,
        name: str,
        url: str,
        *,
        port: int | None = None,
        health_endpoint: str = "/health",
        weight: int = 1,
        metadata: dict[str, Any] | None = None,
        ttl: float | None = None,
        strip_prefix: bool = False,
        source: str = "python",
    ) -> tuple[Instance, bool]:
        """Register (or renew) an instance; returns it and whether it is new.

        ``ttl``: seconds until the registration expires unless renewed (registering again,
        or :meth:`heartbeat`); ``None`` or ``0``: until deregistered. A new instance is
        routed to at once and checked at once.
        """
        data = self._validated(
            name, url, port, health_endpoint, weight, metadata, ttl, strip_prefix, source
        )
        key = instance_key(data["service"], data["url"])
        existing = self._find(data["service"], data["url"])
        if existing is not None and existing.source == "manifest" and source != "manifest":
            # Declared by a running remote app's manifest: a self-registration at the same
            # address renews nothing (the manifest keeps it) but may add metadata.
            existing.metadata.update(data["metadata"])
            return existing, False
        if existing is not None:
            data["registered_at"] = existing.registered_at
        created = existing is None
        if self._store is not None and source != "manifest":
            created = await self._store.put(key, data)
            existing = self._find(data["service"], data["url"])  # changed while waiting?
        if existing is None:
            instance = self._add(instance_from(data, self.settings.latency_window))
        else:
            instance = existing
            if instance.update_registration(data):
                self._services[instance.service].refresh()
        if created:
            logger.info(
                "service %s registered at %s (%s%s)",
                instance.service,
                instance.url,
                source,
                f", ttl {instance.ttl:g} s" if instance.ttl else "",
            )
            await self._emit(SystemEvents.SERVICE_REGISTERED, instance)
        return instance, created

    def _validated(
        self,
        name: Any,
        url: Any,
        port: Any,
        health_endpoint: Any,
        weight: Any,
        metadata: Any,
        ttl: Any,
        strip_prefix: Any,
        source: str,
    ) -> dict[str, Any]:
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise RegistrationError(
                "name",
                f"{name!r} is not a valid service name (letters, digits, '_' and '-', "
                "not starting with a digit)",
            )
        base = normalize_url(url, port)
        if not isinstance(health_endpoint, str) or not health_endpoint.startswith("/"):
            raise RegistrationError("health_endpoint", f"{health_endpoint!r} must start with '/'")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 1000:
            raise RegistrationError("weight", f"{weight!r} is not an integer from 1 to 1000")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise RegistrationError("metadata", "expected an object of strings")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl < math.inf
        ):
            raise RegistrationError("ttl", f"{ttl!r} is not a number of seconds (>= 0)")
        if not ttl and self.settings.default_ttl > 0 and source == "api":
            ttl = self.settings.default_ttl
        if not isinstance(strip_prefix, bool):
            raise RegistrationError("strip_prefix", f"expected true or false, got {strip_prefix!r}")
        if source not in SOURCES:
            raise RegistrationError("source", f"{source!r} is not one of {', '.join(SOURCES)}")
        now = time.time()
        return {
            "service": name,
            "url": base,
            "health_endpoint": health_endpoint,
            "weight": weight,
            "strip_prefix": strip_prefix,
            "metadata": {str(k): str(v) for k, v in metadata.items()},
            "ttl": float(ttl) if ttl else None,
            "expires_at": now + float(ttl) if ttl else None,
            "source": source,
            "registered_at": now,
        }

    async def heartbeat(self, name: str, url: str) -> Instance | None:
        """Renew a registration's time-to-live; ``None`` when it is not registered (the
        caller should register again)."""
        instance = self._find(name, _normalized_or_raw(url))
        if instance is None:
            return None
        if instance.ttl:
            instance.expires_at = time.time() + instance.ttl
            if self._store is not None and instance.source != "manifest":
                await self._store.put(instance.key, instance.registration())
        return instance

    async def deregister(self, name: str, url: str | None = None) -> list[Instance]:
        """Remove ``name``'s instance at ``url``, or all of its instances; returns them.

        Instances declared by a running remote app's manifest stay: stop the plugin instead.
        """
        service = self._services.get(name)
        if service is None:
            return []
        if url is None:
            targets = list(service.instances.values())
        else:
            found = service.instances.get(_normalized_or_raw(url))
            targets = [found] if found is not None else []
        removed = []
        for instance in targets:
            if instance.source == "manifest":
                continue
            if self._store is not None:
                await self._store.remove(instance.key)
            if self._remove(instance):
                removed.append(instance)
                logger.info("service %s at %s deregistered", instance.service, instance.url)
                await self._emit(SystemEvents.SERVICE_UNREGISTERED, instance, "deregistered")
        return removed

    async def deregister_service(self, name: str, url: str | None = None) -> bool:
        """The seed's name: True when something was removed."""
        return bool(await self.deregister(name, url))

    async def get_service_url(self, name: str) -> str | None:
        """The URL of a healthy instance of ``name`` (by load balancing), or ``None``."""
        instance = self.choose(name)
        return instance.url if instance is not None else None

    def set_balancing(self, name: str, strategy: str) -> None:
        """Use ``strategy`` (round_robin, least_connections, weighted) for ``name``."""
        if strategy not in STRATEGIES:
            raise ValueError(f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
        self._service(name).strategy = strategy

    def _strategy_for(self, name: str) -> str:
        return self.settings.balancing_by_service.get(name, self.settings.balancing)

    def _service(self, name: str) -> Service:
        service = self._services.get(name)
        if service is None:
            service = self._services[name] = Service(name, self._strategy_for(name))
        return service

    def _find(self, name: str, url: str) -> Instance | None:
        service = self._services.get(name)
        return service.instances.get(url) if service is not None else None

    def _add(self, instance: Instance) -> Instance:
        service = self._service(instance.service)
        service.instances[instance.url] = instance
        instance.next_check = 0.0  # checked at the next tick
        service.refresh()
        self._poke()
        self._spawn(self._open_upstreams)
        return instance

    def _remove(self, instance: Instance) -> bool:
        service = self._services.get(instance.service)
        if service is None or service.instances.get(instance.url) is not instance:
            return False
        del service.instances[instance.url]
        service.refresh()
        if not service.instances:
            del self._services[instance.service]
        return True

    async def _open_upstreams(self) -> None:
        """The proxy's connection pool is opened once there is somewhere to proxy to."""
        try:
            await self.platform.upstreams.open()
        except Exception:
            logger.exception("the upstream connection pool could not be opened")

    # -- remote apps from manifests ----------------------------------------------------------

    def sync_plugins(self) -> None:
        """Make the running remote apps' manifests (``url``, else ``port`` on 127.0.0.1)
        instances, and drop those of remote apps no longer running."""
        from chatterfix.plugins import PluginState

        declared: dict[tuple[str, str], Any] = {}
        for record in self.platform.plugins.records.values():
            if not record.is_remote or record.state is not PluginState.RUNNING:
                continue
            manifest = record.manifest
            try:
                url = normalize_url(manifest.url or "http://127.0.0.1", manifest.port)
            except RegistrationError as exc:
                logger.error("remote app %s: %s", record.name, exc)
                continue
            declared[record.name, url] = manifest
        for service in list(self._services.values()):
            for instance in list(service.instances.values()):
                if instance.source == "manifest" and (service.name, instance.url) not in declared:
                    self._remove(instance)
                    self._spawn(
                        self._emit, SystemEvents.SERVICE_UNREGISTERED, instance, "plugin stopped"
                    )
        for (name, url), manifest in declared.items():
            existing = self._find(name, url)
            if existing is not None:
                existing.source = "manifest"
                existing.ttl = existing.expires_at = None
                existing.strip_prefix = manifest.strip_prefix
                existing.health_endpoint = manifest.health_endpoint
                continue
            data = self._validated(
                name,
                url,
                None,
                manifest.health_endpoint,
                1,
                {"version": manifest.version},
                None,
                manifest.strip_prefix,
                "manifest",
            )
            instance = self._add(instance_from(data, self.settings.latency_window))
            self._spawn(self._emit, SystemEvents.SERVICE_REGISTERED, instance)

    # -- health ------------------------------------------------------------------------------

    async def _check(self, instance: Instance) -> None:
        settings = self.settings
        try:
            assert self._limiter is not None
            async with self._limiter:
                ok, error = await self._probe(instance)
        finally:
            instance.checking = False
        instance.last_check = time.time()
        instance.last_check_error = error
        interval = settings.health_interval
        if ok:
            instance.check_failures = 0
            instance.check_passes += 1
            instance.next_check = time.monotonic() + interval
            if instance.healthy:
                instance.ejections = 0  # a full interval healthy since re-admission
            elif (
                instance.check_passes >= settings.healthy_threshold
                and time.time() >= instance.ejected_until
            ):
                self._set_health(instance, True, "")
        else:
            instance.check_passes = 0
            instance.check_failures += 1
            # Unhealthy instances are probed less and less often, up to health_max_interval.
            doublings = min(instance.check_failures - 1, 16)
            wait = min(interval * 2**doublings, max(settings.health_max_interval, interval))
            instance.next_check = time.monotonic() + wait
            if instance.healthy and instance.check_failures >= settings.unhealthy_threshold:
                self._set_health(instance, False, f"health check failed: {error}")

    async def _probe(self, instance: Instance) -> tuple[bool, str]:
        """``GET url + health_endpoint``: healthy on a 2xx or 3xx within the timeout, tried
        ``1 + discovery.health_retries`` times with a doubling pause in between."""
        import httpx

        settings = self.settings
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=settings.health_timeout,
                trust_env=False,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                headers={"User-Agent": "chatterfix-health-check"},
            )
        error = ""
        for attempt in range(settings.health_retries + 1):
            if attempt:
                await anyio.sleep(settings.health_backoff * 2 ** (attempt - 1))
            try:
                with anyio.fail_after(settings.health_timeout):
                    response = await self._http.get(instance.url + instance.health_endpoint)
            except TimeoutError:
                error = f"timed out after {settings.health_timeout:g} s"
                continue
            except (httpx.HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if 200 <= response.status_code < 400:
                return True, ""
            error = f"{instance.health_endpoint} answered {response.status_code}"
        return False, error

    def _set_health(self, instance: Instance, healthy: bool, reason: str) -> None:
        """Change an instance's health here at once; share it and report it in the
        background (with a shared registry, only the replica that changed it reports)."""
        if instance.healthy == healthy:
            return
        instance.healthy = healthy
        instance.reason = reason
        service = self._services.get(instance.service)
        if service is not None:
            service.refresh()
        level = logging.INFO if healthy else logging.WARNING
        logger.log(
            level,
            "service %s at %s %s",
            instance.service,
            instance.url,
            "recovered" if healthy else f"is unhealthy ({reason})",
        )
        self._spawn(self._publish_health, instance, healthy, reason)

    async def _publish_health(self, instance: Instance, healthy: bool, reason: str) -> None:
        event = SystemEvents.SERVICE_RECOVERED if healthy else SystemEvents.SERVICE_UNHEALTHY
        if self._store is not None and instance.source != "manifest":
            try:
                changed = await self._store.set_health(
                    instance.key, Health(healthy, instance.ejected_until, reason)
                )
            except Exception as exc:
                logger.warning("discovery backend: recording health failed: %s", exc)
                changed = True  # still say it here
            if not changed:
                return  # another replica made this change and reported it
        await self._emit(event, instance, reason)

    # -- expiry and the shared registry ------------------------------------------------------

    def _expire_due(self, group: anyio.abc.TaskGroup) -> None:
        now = time.time()
        for service in list(self._services.values()):
            for instance in list(service.instances.values()):
                expires = instance.expires_at
                if expires is None or expires > now or instance.source == "manifest":
                    continue
                if self._store is None:
                    self._remove(instance)
                    logger.warning(
                        "service %s at %s expired (no renewal within %g s)",
                        instance.service,
                        instance.url,
                        instance.ttl or 0,
                    )
                    group.start_soon(
                        self._emit, SystemEvents.SERVICE_UNREGISTERED, instance, "expired"
                    )
                else:
                    instance.expires_at = None  # until the store says otherwise
                    group.start_soon(self._expire_shared, instance, now)

    async def _expire_shared(self, instance: Instance, now: float) -> None:
        try:
            removed = await self._store.expire(instance.key, now) if self._store else False
        except Exception as exc:
            logger.warning("discovery backend: expiry failed: %s", exc)
            removed = False
        if removed:
            logger.warning("service %s at %s expired", instance.service, instance.url)
            self._remove(instance)
            await self._emit(SystemEvents.SERVICE_UNREGISTERED, instance, "expired")
        else:
            self._resync = True  # renewed elsewhere, or removed by another replica

    async def _follow_store(self) -> None:
        """Poll the shared registry's version; read it again when it changed."""
        assert self._store is not None
        interval = self.settings.sync_interval
        failing = False
        while True:
            await anyio.sleep(interval)
            try:
                version = await self._store.version()
                if version != self._version or self._resync:
                    self._resync = False
                    await self._sync(await self._store.snapshot())
            except Exception as exc:
                if not failing:
                    logger.warning("discovery backend %s: %s", self.settings.backend, exc)
                failing = True
                continue
            if failing:
                logger.info("discovery backend %s reachable again", self.settings.backend)
                failing = False

    async def _sync(self, snapshot: Snapshot) -> None:
        """Bring the local view in line with the shared one (manifest instances are this
        replica's own and stay)."""
        self._version = snapshot.version
        seen: set[str] = set()
        for key, data in snapshot.registrations.items():
            try:
                name, url = data["service"], data["url"]
            except (KeyError, TypeError):
                continue
            seen.add(key)
            instance = self._find(name, url)
            if instance is None:
                instance = self._add(instance_from(data, self.settings.latency_window))
            elif instance.source != "manifest" and instance.update_registration(data):
                self._services[name].refresh()
            health = snapshot.health.get(key)
            if health is not None and instance.source != "manifest":
                self._adopt_health(instance, health)
        for instance in self._all():
            if instance.source != "manifest" and instance.key not in seen:
                self._remove(instance)

    def _adopt_health(self, instance: Instance, health: Health) -> None:
        """Another replica's verdict on an instance."""
        if health.healthy == instance.healthy:
            return
        instance.healthy = health.healthy
        instance.reason = health.reason
        if not health.healthy:
            instance.ejected_until = max(instance.ejected_until, health.until)
            instance.next_check = min(instance.next_check, time.monotonic())
        self._services[instance.service].refresh()

    def _all(self) -> Iterable[Instance]:
        return [i for service in list(self._services.values()) for i in service.instances.values()]

    # -- events ------------------------------------------------------------------------------

    async def _emit(self, event_type: str, instance: Instance, reason: str = "") -> None:
        data: dict[str, Any] = {"service": instance.service, "url": instance.url}
        if reason:
            data["reason"] = reason
        try:
            await self.platform.events.emit(event_type, data, source="platform")
        except Exception:
            logger.exception("emitting %s failed", event_type)

    # -- reports -----------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """One entry per instance, this gateway's figures: ``{"service", "url", "healthy",
        "requests", "errors", "p50_ms", "p95_ms", "in_flight"}`` (latencies to the response
        headers over the last ``discovery.latency_window`` requests; ``None`` before any)."""
        return [instance.stats() for instance in self._all()]

    def services(self) -> dict[str, dict[str, Any]]:
        """Every service with its instances, as ``GET /platform/services`` shows them."""
        now = time.time()
        report: dict[str, dict[str, Any]] = {}
        for name in sorted(self._services):
            service = self._services[name]
            instances = [service.instances[url].describe(now) for url in sorted(service.instances)]
            healthy = sum(1 for item in instances if item["healthy"])
            report[name] = {
                "name": name,
                "balancing": service.strategy,
                "instances": instances,
                "healthy_instances": healthy,
                "availability_percentage": (
                    round(100.0 * healthy / len(instances), 2) if instances else 100.0
                ),
            }
        return report

    def counts(self) -> tuple[int, int]:
        """(instances, healthy instances), for the platform's availability figures: an
        instance counts as healthy once a health check has passed (it is routed to from its
        registration on, but not reported healthy without a check)."""
        instances = list(self._all())
        healthy = sum(1 for i in instances if i.healthy and i.last_check is not None)
        return len(instances), healthy


def _normalized_or_raw(url: str) -> str:
    try:
        return normalize_url(url)
    except RegistrationError:
        return url
