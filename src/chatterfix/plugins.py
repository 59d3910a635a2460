"""The plugin registry: discovery, validation, dependency order, lifecycle and health.

Hooks are called one plugin at a time (not through pluggy's all-at-once call) so that a
plugin whose hook raises is put in state ``error`` alone while every other plugin runs on.
"""

from __future__ import annotations

import difflib
import graphlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import pluggy
from packaging.version import Version

from chatterfix import hookspecs
from chatterfix.context import current_plugin_owner
from chatterfix.events.bus import Subscription
from chatterfix.events.catalog import SystemEvents
from chatterfix.hookcalls import AsyncHookRelay, call_impls, hookspecs_names
from chatterfix.manifest import ManifestError, PluginManifest, structure_manifest
from chatterfix.plugin_sources import (
    Candidate,
    code_candidates,
    entry_point_candidates,
    folder_candidates,
    remote_candidate,
)
from chatterfix.routes import find_conflict, route_claims

if TYPE_CHECKING:
    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.plugins")

HEALTH_STATES = ("healthy", "degraded", "unhealthy")
# A plugin may declare hooks of its own for other plugins to implement (a class or module
# of functions marked with ``chatterfix.hookspec``), as pytest plugins do with pytest_addhooks.
HOOKSPECS_ATTRIBUTE = "HOOKSPECS"


class PluginState(StrEnum):
    DISCOVERED = "discovered"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    DISABLED = "disabled"


class PluginLoadError(RuntimeError):
    """Raised in strict mode (``CHATTERFIX_STRICT_PLUGINS=1``) for any plugin load error."""


class PluginNotFound(LookupError):
    pass


class PluginActionError(RuntimeError):
    """A start/stop/reload that could not be carried out; the message says why."""


@attrs.frozen
class LoadError:
    """A plugin that could not be imported or validated; the rest still load."""

    name: str
    source: str
    message: str
    traceback: str = ""


@attrs.define(eq=False)
class PluginRecord:
    """One generation of one plugin: a reload makes a new record with the same name."""

    name: str
    origin: str
    location: str
    manifest: PluginManifest
    candidate: Candidate = attrs.field(repr=False)
    plugin: object | None = attrs.field(default=None, repr=False)
    state: PluginState = PluginState.DISCOVERED
    error_message: str = ""
    error_traceback: str = ""
    warnings: list[str] = attrs.Factory(list)
    hookimpls: dict[str, list[pluggy.HookImpl]] = attrs.field(factory=dict, repr=False)
    routes: list[Any] = attrs.field(factory=list, repr=False)
    middleware: list[Any] = attrs.field(factory=list, repr=False)
    started_at: datetime | None = None
    last_heartbeat: datetime | None = None
    health_failing: bool = False
    schema_version: int | None = None

    # Subscriptions made while the module was imported (``@event_system.subscribe`` at
    # module level): renewed on every start of this generation, dropped on stop.
    import_subscriptions: list[Subscription] = attrs.field(factory=list, repr=False)

    @property
    def is_remote(self) -> bool:
        return self.plugin is None and self.manifest.is_remote_capable

    @property
    def hooks(self) -> list[str]:
        return sorted(self.hookimpls)

    def fail(self, message: str, tb: str = "") -> None:
        self.state = PluginState.ERROR
        self.error_message = message
        self.error_traceback = tb

    def summary(self, *, tracebacks: bool = True) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.manifest.version,
            "description": self.manifest.description,
            "author": self.manifest.author,
            "app_type": self.manifest.app_type.value,
            "status": self.state.value,
            "origin": self.origin,
            "location": self.location,
            "remote": self.is_remote,
            "url": self.manifest.url,
            "hooks": self.hooks,
            "dependencies": self.manifest.dependencies,
            "routes": [path for route in self.routes for path, _ in route_claims(route)],
            "error_message": self.error_message,
            "error_traceback": self.error_traceback if tracebacks else "",
            "warnings": self.warnings,
            "started_at": iso_utc(self.started_at),
            "last_heartbeat": iso_utc(self.last_heartbeat),
            "schema_version": self.schema_version,
        }


def iso_utc(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _now() -> datetime:
    return datetime.now(UTC)


def _short_traceback() -> str:
    return traceback.format_exc(limit=-8)


class PluginRegistry:
    """Finds, validates, orders, starts and stops the platform's plugins.

    Seed-compatible methods: ``register_plugin``, ``start_all_plugins``,
    ``get_plugin_status``. Lifecycle changes (start, stop, reload) are serialised: one at a
    time per platform, so two operators clicking at once cannot interleave them. Only the
    shutdown of a reloaded plugin's previous generation runs outside that order, once its
    requests have drained: it touches nothing the current generation owns.
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.load_errors: list[LoadError] = []
        self.start_order: list[str] = []
        self.ahook = AsyncHookRelay(self.pm, self._active_owner)
        self._discovering = False
        self._lifecycle: anyio.Lock | None = None
        self._retiring: set[PluginRecord] = set()

    # -- discovery -----------------------------------------------------------------------

    def discover(
        self,
        *,
        builtins: bool,
        entrypoints: bool,
        plugins_dir: Path | None,
        objects: Iterable[object],
    ) -> None:
        sources: list[Iterable[Candidate | ManifestError]] = [
            entry_point_candidates(builtins=builtins, third_party=entrypoints)
        ]
        if plugins_dir is not None:
            sources.append(folder_candidates(plugins_dir))
        sources.append(code_candidates(objects))
        self._discovering = True
        try:
            for source in sources:
                for item in source:
                    if isinstance(item, ManifestError):
                        folder = Path(item.source)
                        name = folder.parent.name if folder.name == "plugin.json" else "?"
                        self._load_error(LoadError(name, item.source, str(item)))
                    else:
                        self.add_candidate(item)
            self._check_unknown_hooks()
        finally:
            self._discovering = False

    def add_candidate(self, candidate: Candidate) -> PluginRecord | None:
        if candidate.name in self.records:
            other = self.records[candidate.name]
            self._load_error(
                LoadError(
                    candidate.name,
                    candidate.location,
                    f"plugin name {candidate.name!r} is already taken by {other.location} "
                    f"({other.origin}); this one is ignored",
                )
            )
            return None
        if self._blocked_by_config(candidate.name):
            return self._add_blocked(candidate)
        record = self._load(candidate)
        if record is None or (record.plugin is not None and not self._register(record)):
            return None
        self.records[record.name] = record
        return record

    def _add_blocked(self, candidate: Candidate) -> PluginRecord | None:
        """A plugin disabled by configuration: listed, never imported."""
        try:
            placeholder = structure_manifest({"name": candidate.name}, candidate.location)
        except ManifestError as exc:
            self._load_error(LoadError(candidate.name, exc.source, str(exc)))
            return None
        record = PluginRecord(
            candidate.name, candidate.origin, candidate.location, placeholder, candidate
        )
        record.state = PluginState.DISABLED
        self.records[candidate.name] = record
        return record

    def _blocked_by_config(self, name: str) -> bool:
        config = self.platform.config
        # Block lists add up across layers: the environment can disable one more plugin
        # without repeating the config file's list.
        disabled = {
            item for _, value in config.layered("plugins.disabled") for item in _names(value)
        }
        only = _names(config.get("plugins.only"))
        return name in disabled or bool(only and name not in only)

    def _load(self, candidate: Candidate) -> PluginRecord | None:
        before = set(sys.modules)
        began = time.perf_counter()
        owner = current_plugin_owner.set(candidate)
        try:
            with self.platform.activated():
                loaded = candidate.load()
        except ManifestError as exc:
            self._load_error(LoadError(candidate.name, exc.source, str(exc)))
            return None
        except (Exception, SystemExit) as exc:
            # SystemExit too: a plugin calling sys.exit() or argparse at import time must
            # not end discovery for everyone else.
            for name in set(sys.modules) - before:
                if _under(name, candidate.module_prefixes):
                    del sys.modules[name]
            self.platform.events.take_owned(candidate)
            self._load_error(
                LoadError(
                    candidate.name,
                    candidate.location,
                    f"import failed: {type(exc).__name__}: {exc}",
                    _short_traceback(),
                )
            )
            return None
        finally:
            current_plugin_owner.reset(owner)
        record = PluginRecord(
            loaded.manifest.name,
            candidate.origin,
            candidate.location,
            loaded.manifest,
            candidate,
            loaded.plugin,
            import_subscriptions=self.platform.events.take_owned(candidate),
        )
        if not loaded.manifest.enabled:
            record.state = PluginState.DISABLED
        logger.debug(
            "plugin %s %s loaded from %s in %.1f ms",
            record.name,
            record.manifest.version,
            record.location,
            (time.perf_counter() - began) * 1000,
        )
        return record

    def _register(self, record: PluginRecord) -> bool:
        try:
            specs = getattr(record.plugin, HOOKSPECS_ATTRIBUTE, None)
            if specs is not None:
                self.pm.add_hookspecs(specs)
            self.pm.register(record.plugin, name=record.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            self._load_error(
                LoadError(
                    record.name, record.location, f"invalid plugin: {exc}", _short_traceback()
                )
            )
            return False
        record.hookimpls = {
            caller.name: [impl for impl in caller.get_hookimpls() if impl.plugin is record.plugin]
            for caller in self.pm.get_hookcallers(record.plugin) or []
        }
        record.warnings = _unmarked_hook_warnings(record.plugin, self.pm)
        return True

    def _check_unknown_hooks(self, only: PluginRecord | None = None) -> None:
        """pluggy's ``check_pending``, per plugin and with a suggestion for misspellings."""
        known = hookspecs_names()
        for record in [only] if only else list(self.records.values()):
            unknown = [
                name
                for name in record.hookimpls
                if not getattr(self.pm.hook, name).has_spec()
                and not all(impl.optionalhook for impl in record.hookimpls[name])
            ]
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                message = f"unknown hook {name!r} in plugin {record.name!r}{hint}"
                record.fail(message)
                self._load_error(LoadError(record.name, record.location, message))

    def _load_error(self, error: LoadError) -> None:
        logger.error(
            "plugin load error: %s (%s)%s", error.message, error.source, _indented(error.traceback)
        )
        self.load_errors.append(error)
        # Strict mode is for discovery: a bad reload at runtime keeps the old code serving.
        if self._discovering and self.platform.config.get("plugins.strict"):
            raise PluginLoadError(f"{error.source}: {error.message}")

    async def register_plugin(self, metadata: PluginManifest | Mapping[str, Any]) -> PluginRecord:
        """Register a manifest-only (remote) app at runtime, as the seed's registry did."""
        manifest = (
            metadata
            if isinstance(metadata, PluginManifest)
            else structure_manifest(dict(metadata), "register_plugin()")
        )
        if manifest.name in self.records:
            raise PluginActionError(f"plugin {manifest.name!r} is already registered")
        record = self.add_candidate(remote_candidate(manifest))
        if record is None:
            raise PluginActionError(f"plugin {manifest.name!r} could not be registered")
        await self.platform.events.emit(
            SystemEvents.PLUGIN_REGISTERED, _event_data(record), source="platform"
        )
        if manifest.auto_start and self.platform.started:
            await self.start_plugin(record.name)
        return record

    # -- lookup --------------------------------------------------------------------------

    def get(self, name: str) -> PluginRecord:
        try:
            return self.records[name]
        except KeyError:
            raise PluginNotFound(f"no plugin named {name!r}") from None

    def get_plugin_status(self, name: str) -> dict[str, Any] | None:
        record = self.records.get(name)
        return record.summary() if record else None

    def running(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.state is PluginState.RUNNING]

    def _active_owner(self, name: str, plugin: object) -> object | None:
        record = self.records.get(name)
        if record is None or record.plugin is not plugin:
            return plugin  # registered on the plugin manager directly
        return record if record.state in (PluginState.RUNNING, PluginState.STARTING) else None

    async def call(
        self, record: PluginRecord, hook: str, *, in_thread: bool = False, **kwargs: Any
    ) -> list[Any]:
        """Call one plugin generation's implementations of ``hook``."""
        return await call_impls(
            record, record.hookimpls.get(hook, ()), kwargs, sync_in_thread=in_thread
        )

    # -- lifecycle -----------------------------------------------------------------------

    def _lock(self) -> anyio.Lock:
        if self._lifecycle is None:
            self._lifecycle = anyio.Lock()
        return self._lifecycle

    def resolve_order(self) -> list[str]:
        """Topological start order; members of a dependency cycle are put in ``error``."""
        graph = {
            name: {req.name for req in record.manifest.requirements if req.name in self.records}
            for name, record in self.records.items()
        }
        while True:
            try:
                order = list(graphlib.TopologicalSorter(graph).static_order())
                break
            except graphlib.CycleError as exc:
                cycle: list[str] = exc.args[1]
                message = "dependency cycle: " + " -> ".join(reversed(cycle))
                for member in set(cycle):
                    self.records[member].fail(message)
                    graph.pop(member, None)
                for deps in graph.values():
                    deps.difference_update(cycle)
        self.start_order = order
        return order

    async def start_all_plugins(self) -> dict[str, str]:
        """Start every enabled, auto-start plugin in dependency order."""
        async with self._lock():
            for name in self.resolve_order():
                record = self.records[name]
                ready = record.state in (PluginState.DISCOVERED, PluginState.STOPPED)
                if ready and record.manifest.auto_start:
                    await self._start(record)
            self.platform.routes_changed()
        return {name: record.state.value for name, record in self.records.items()}

    async def stop_all_plugins(self) -> None:
        """Stop every running plugin in reverse start order, and any generation retiring."""
        async with self._lock():
            for name in reversed(self._full_order()):
                record = self.records[name]
                if record.state in (PluginState.RUNNING, PluginState.STOPPING):
                    await self._stop(record)
            while self._retiring:  # popped first, so a finishing drain cannot stop it twice
                await self._stop(self._retiring.pop(), emit=False)

    async def start_plugin(self, name: str) -> PluginRecord:
        async with self._lock():
            record = self.get(name)
            if record.state is PluginState.RUNNING:
                return record
            if record.state is PluginState.DISABLED:
                raise PluginActionError(f"plugin {name!r} is disabled")
            await self._start(record)
            self.platform.routes_changed()
        if record.state is PluginState.ERROR:
            raise PluginActionError(f"plugin {name!r} failed to start: {record.error_message}")
        return record

    async def stop_plugin(self, name: str) -> list[str]:
        """Stop a plugin and, first, every running plugin that depends on it."""
        async with self._lock():
            record = self.get(name)
            if record.state is not PluginState.RUNNING:
                raise PluginActionError(f"plugin {name!r} is not running ({record.state.value})")
            members = [
                self.records[dependent]
                for dependent in self._dependents(name)
                if self.records[dependent].state is PluginState.RUNNING
            ]
            members.append(record)
            for member in members:
                member.state = PluginState.STOPPING
            previous = self.platform.routes_changed()
            await self.platform.drain(previous)
            for member in members:
                await self._stop(member)
        return [member.name for member in members]

    async def reload_plugin(self, name: str) -> PluginRecord:
        """Import the plugin's code afresh and swap it in without failing a request.

        A running plugin's new generation is started while the old one still serves; the
        gateway then swaps its routes in one step, and the old generation is shut down once
        its in-flight requests are done. A plugin that was not running gets its new code
        and keeps its state, except one in ``error``, which is started. If anything fails,
        the old generation keeps serving.
        """
        async with self._lock():
            old = self.get(name)
            if old.state is PluginState.DISABLED and old.plugin is None and not old.is_remote:
                raise PluginActionError(f"plugin {name!r} is disabled by configuration")
            prefixes = self._reload_prefixes(old)
            saved_modules = _purge_modules(prefixes)
            new = self._load(old.candidate)
            if new is None or new.name != name:
                _reinstate_modules(prefixes, saved_modules)
                reason = (
                    self.load_errors[-1].message
                    if new is None
                    else f"the manifest now names it {new.name!r}; restart the platform to rename"
                )
                raise PluginActionError(
                    f"reload of {name!r} failed, previous code keeps running: {reason}"
                )
            await self._swap_in(old, new, prefixes, saved_modules)
        return new

    def _reload_prefixes(self, record: PluginRecord) -> tuple[str, ...]:
        """What to re-import: the plugin's package, unless another plugin shares it."""
        wide = record.candidate.module_prefixes
        shared = any(
            other is not record and set(other.candidate.module_prefixes) & set(wide)
            for other in self.records.values()
        )
        own = record.candidate.own_module
        return (own,) if shared and own else wide

    async def _swap_in(
        self,
        old: PluginRecord,
        new: PluginRecord,
        prefixes: tuple[str, ...],
        saved_modules: dict[str, Any],
    ) -> None:
        """Register ``new`` in place of ``old`` and start it if ``old`` was meant to run;
        on failure put ``old`` back exactly as it was and raise."""
        if old.plugin is not None and self.pm.is_registered(old.plugin):
            self.pm.unregister(old.plugin)
        try:
            self._register_replacement(new)
            if new.state is PluginState.ERROR:
                raise PluginActionError(new.error_message)
            if self._should_start(old, new):
                await self._start_in_place_of(old, new)
        except PluginActionError as exc:
            if new.plugin is not None and self.pm.is_registered(new.plugin):
                self.pm.unregister(new.plugin)
            self._reinstate(old, prefixes, saved_modules)
            kept = ", previous code keeps running" if old.state is PluginState.RUNNING else ""
            raise PluginActionError(f"reload of {old.name!r} failed{kept}: {exc}") from None
        if not self._should_start(old, new) and new.state is not PluginState.DISABLED:
            # Keep a stopped plugin stopped; one enabled by its new manifest can now start.
            stopped = (PluginState.STOPPING, PluginState.STOPPED)
            new.state = PluginState.STOPPED if old.state in stopped else PluginState.DISCOVERED
        self.records[old.name] = new
        self.load_errors = [error for error in self.load_errors if error.name != old.name]
        previous = self.platform.routes_changed()
        if old.state is PluginState.RUNNING:
            old.state = PluginState.STOPPING
            self._retiring.add(old)
            self.platform.spawn(self._retire, old, previous)

    def _register_replacement(self, new: PluginRecord) -> None:
        if new.plugin is not None and not self._register(new):
            raise PluginActionError(self.load_errors[-1].message)
        self._check_unknown_hooks(new)

    @staticmethod
    def _should_start(old: PluginRecord, new: PluginRecord) -> bool:
        running_or_failed = old.state in (PluginState.RUNNING, PluginState.ERROR)
        return new.state is not PluginState.DISABLED and running_or_failed

    async def _start_in_place_of(self, old: PluginRecord, new: PluginRecord) -> None:
        """Start ``new`` while ``old`` still serves requests. Events switch over at once,
        so no event reaches both generations; requests switch with the routes."""
        contributions = self.platform.contributions_of(old.name)
        subscriptions = self.platform.events.take_owned(old)
        await self._start(new, replacing=old)
        if new.state is not PluginState.RUNNING:
            self.platform.restore_contributions(old.name, contributions)
            self.platform.events.restore(subscriptions)
            raise PluginActionError(new.error_message)

    async def _retire(self, old: PluginRecord, previous_routing: object) -> None:
        await self.platform.drain(previous_routing)
        if old in self._retiring:
            self._retiring.discard(old)
            await self._stop(old, emit=False)

    def _reinstate(
        self, old: PluginRecord, prefixes: tuple[str, ...], saved: dict[str, Any]
    ) -> None:
        _reinstate_modules(prefixes, saved)
        if old.plugin is not None and not self.pm.is_registered(old.plugin):
            self.pm.register(old.plugin, name=old.name)

    def _dependents(self, name: str) -> list[str]:
        """Plugins depending on ``name``, directly or not, in the order to stop them."""
        needed_by: dict[str, list[str]] = {}
        for other, record in self.records.items():
            for requirement in record.manifest.requirements:
                needed_by.setdefault(requirement.name, []).append(other)
        found: set[str] = set()
        frontier = [name]
        while frontier:
            for other in needed_by.get(frontier.pop(), ()):
                if other not in found:
                    found.add(other)
                    frontier.append(other)
        return [other for other in reversed(self._full_order()) if other in found]

    def _full_order(self) -> list[str]:
        """The start order, then plugins registered since it was resolved."""
        order = [name for name in self.start_order if name in self.records]
        return order + [name for name in self.records if name not in order]

    def _dependency_problem(self, record: PluginRecord) -> str | None:
        for requirement in record.manifest.requirements:
            dependency = self.records.get(requirement.name)
            if dependency is None:
                return f"missing dependency {requirement.name!r} (requires '{requirement}')"
            version = Version(dependency.manifest.version)
            if requirement.specifier and not requirement.specifier.contains(
                version, prereleases=True
            ):
                return (
                    f"dependency '{requirement}' not satisfied: {dependency.name!r} is "
                    f"version {version}"
                )
            if dependency.state is not PluginState.RUNNING:
                reason = f": {dependency.error_message}" if dependency.error_message else ""
                return (
                    f"dependency {dependency.name!r} is not running "
                    f"({dependency.state.value}{reason})"
                )
        return None

    async def _start(self, record: PluginRecord, replacing: PluginRecord | None = None) -> None:
        """Run the start sequence; on any failure the plugin ends in ``error``, cleaned up.

        Routes and middleware are collected and checked *before* ``startup``, so a plugin
        whose routes collide never acquires resources that would need a ``shutdown``.
        """
        problem = self._dependency_problem(record)
        if problem:
            record.fail(problem)
            logger.error("plugin %s: %s", record.name, problem)
            await self._emit_error(record)
            return
        record.state = PluginState.STARTING
        record.error_message = record.error_traceback = ""
        platform = self.platform
        step = "config_schema"
        released_tables: list[Any] | None = None
        try:
            with platform.activated():
                schema = dict(record.manifest.config_schema)
                for extra in await self.call(record, "config_schema"):
                    schema.update(extra or {})
                platform.config.add_schema_defaults(record.name, schema)
                step = "register_models"
                released_tables = platform.release_tables(record.name)
                if {"register_models", "register_migrations"} & record.hookimpls.keys():
                    await self._apply_schema(record)  # SQLAlchemy loads only if needed
                step = "register_permissions"
                platform.add_permissions(record, dict.fromkeys(record.manifest.permissions, ""))
                for result in await self.call(record, "register_permissions", platform=platform):
                    platform.add_permissions(record, _as_permissions(result))
                step = "register_ai_providers"
                for result in await self.call(record, "register_ai_providers", platform=platform):
                    platform.add_ai_providers(record, result)
                step = "register_event_handlers"
                for subscription in record.import_subscriptions:
                    platform.events.subscribe(
                        subscription.pattern,
                        subscription.handler,
                        priority=subscription.priority,
                        owner=record,
                    )
                for result in await self.call(record, "register_event_handlers", platform=platform):
                    for event_type, handler in result or ():
                        platform.events.subscribe(event_type, handler, owner=record)
                step = "register_routes"
                routes = await self._routes_of(record)
                step = "register_middleware"
                middleware = await self._middleware_of(record)
                step = "routes"
                self._check_conflicts(record, routes, replacing or record)
                step = "startup"
                await self.call(record, "startup", platform=platform)
        except BaseException as exc:
            if isinstance(exc, RouteConflict):
                record.fail(str(exc))
            else:
                reason = "cancelled" if not isinstance(exc, Exception) else type(exc).__name__
                record.fail(f"{step} failed: {reason}: {exc}", _short_traceback())
            if released_tables is not None:
                platform.restore_tables(record.name, released_tables)
            self._undo(record)
            logger.error(
                "plugin %s: %s%s",
                record.name,
                record.error_message,
                _indented(record.error_traceback),
            )
            if not isinstance(exc, Exception):
                raise
            await self._emit_error(record)
            return
        record.routes = routes
        record.middleware = middleware
        record.state = PluginState.RUNNING
        record.started_at = _now()
        if not record.is_remote:  # a remote app's heartbeat comes from its own checks
            record.last_heartbeat = record.started_at
        logger.debug("plugin %s running (%d routes)", record.name, len(routes))
        await platform.events.emit(
            SystemEvents.PLUGIN_STARTED, _event_data(record), source="platform"
        )

    async def _apply_schema(self, record: PluginRecord) -> None:
        """Declare the plugin's tables and bring them to the version its code expects."""
        from chatterfix.services.schema import check_migrations

        platform = self.platform
        metadata = platform.metadata
        before = set(metadata.tables)
        for result in await self.call(record, "register_models", metadata=metadata):
            _attach_tables(metadata, result)
        owned = set(metadata.tables) - before
        platform.claim_tables(record.name, owned)
        migrations: dict[int, Any] = {}
        for result in await self.call(record, "register_migrations", platform=platform):
            migrations.update(check_migrations(record.name, result or {}))
        tables = [table for table in metadata.sorted_tables if table.name in owned]
        change = await platform.database.apply_schema(record.name, tables, migrations)
        record.schema_version = change.version

    async def _routes_of(self, record: PluginRecord) -> list[Any]:
        from starlette.routing import BaseRoute

        routes: list[Any] = []
        for result in await self.call(record, "register_routes", platform=self.platform):
            items = [result] if isinstance(result, BaseRoute) else list(result or ())
            for route in items:
                if not isinstance(route, BaseRoute):
                    raise TypeError(f"register_routes must return Starlette routes, got {route!r}")
                routes.append(route)
        return routes

    async def _middleware_of(self, record: PluginRecord) -> list[Any]:
        """Collect and try out the plugin's middleware, so a broken entry fails this plugin
        now instead of breaking the gateway's next rebuild for everyone."""
        from starlette.middleware import Middleware

        entries = [
            entry if isinstance(entry, Middleware) else Middleware(entry)
            for result in await self.call(record, "register_middleware", platform=self.platform)
            for entry in (result or ())
        ]

        async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
            return None

        app: Any = inner
        for cls, args, kwargs in reversed(entries):
            app = cls(app, *args, **kwargs)
        return entries

    def _check_conflicts(
        self, record: PluginRecord, routes: list[Any], replacing: PluginRecord
    ) -> None:
        taken: dict[tuple[str, str], str] = {
            claim: "platform" for claim in self.platform.reserved_route_claims()
        }
        for other in self.records.values():
            if other.name == replacing.name or other.state is not PluginState.RUNNING:
                continue
            for route in other.routes:
                for claim in route_claims(route):
                    taken[claim] = other.name
        conflict = find_conflict(routes, taken)
        if conflict:
            path, method, owner = conflict
            raise RouteConflict(
                f"route {method} {path} of plugin {record.name!r} collides with plugin {owner!r}"
            )

    def _undo(self, record: PluginRecord) -> None:
        """Forget what a generation registered with the shared registries."""
        self.platform.events.unsubscribe_owner(record)
        self.platform.remove_contributions(record)

    async def _stop(self, record: PluginRecord, *, emit: bool = True) -> None:
        record.state = PluginState.STOPPING
        try:
            with self.platform.activated():
                await self.call(record, "shutdown", platform=self.platform)
        except Exception as exc:
            record.error_message = f"shutdown failed: {type(exc).__name__}: {exc}"
            record.error_traceback = _short_traceback()
            logger.error(
                "plugin %s: %s%s",
                record.name,
                record.error_message,
                _indented(record.error_traceback),
            )
        finally:
            self._undo(record)
            record.state = PluginState.STOPPED
            record.routes = []
            record.middleware = []
        if emit:
            await self.platform.events.emit(
                SystemEvents.PLUGIN_STOPPED, _event_data(record), source="platform"
            )

    async def _emit_error(self, record: PluginRecord) -> None:
        await self.platform.events.emit(
            SystemEvents.PLUGIN_ERROR, _event_data(record), source="platform"
        )

    # -- health --------------------------------------------------------------------------

    async def check_health(self) -> dict[str, dict[str, Any]]:
        """Run every running plugin's ``health_check`` concurrently, with a time limit."""
        limit = float(self.platform.config.get("plugins.health_timeout"))
        results: dict[str, dict[str, Any]] = {}

        async def check(record: PluginRecord) -> None:
            results[record.name] = await self._health_of(record, limit)

        async with anyio.create_task_group() as group:
            for record in self.running():
                if not record.is_remote:  # remote apps are probed by service discovery
                    group.start_soon(check, record)
        for record in self.records.values():
            if record.name not in results:
                results[record.name] = {
                    "status": "unhealthy" if record.state is PluginState.ERROR else "unknown",
                    **({"remote": record.manifest.url} if record.is_remote else {}),
                    "state": record.state.value,
                    **({"error": record.error_message} if record.error_message else {}),
                }
        return results

    async def _health_of(self, record: PluginRecord, limit: float) -> dict[str, Any]:
        if "health_check" not in record.hookimpls:
            result: dict[str, Any] = {"status": "healthy"}
        else:
            try:
                with anyio.fail_after(limit):
                    outcome = await self.call(
                        record, "health_check", in_thread=True, platform=self.platform
                    )
                result = _valid_health(outcome[-1] if outcome else None)
            except TimeoutError:
                result = {"status": "unhealthy", "error": f"health check timed out ({limit}s)"}
                self._health_failed(record, result["error"], "")
            except Exception as exc:
                result = {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
                self._health_failed(record, result["error"], _short_traceback())
        if result["status"] != "unhealthy":
            record.last_heartbeat = _now()
            if record.health_failing:  # recovered: the error was the check's, not the plugin's
                record.health_failing = False
                record.error_message = record.error_traceback = ""
        return {**result, "state": record.state.value}

    @staticmethod
    def _health_failed(record: PluginRecord, error: str, tb: str) -> None:
        record.health_failing = True
        record.error_message = f"health_check failed: {error}"
        record.error_traceback = tb
        logger.warning("plugin %s: %s", record.name, record.error_message)


class RouteConflict(RuntimeError):
    pass


def _names(value: Any) -> list[str]:
    """A list of plugin names from config: a list, or a comma-separated string."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list | tuple | set):
        return [str(item) for item in value]
    return []


def _indented(text: str) -> str:
    return "\n" + "\n".join("    " + line for line in text.rstrip().splitlines()) if text else ""


def _under(module_name: str, prefixes: Iterable[str]) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in prefixes)


def _valid_health(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("status") not in HEALTH_STATES:
        return {
            "status": "unhealthy",
            "error": f"health_check must return {{'status': one of {HEALTH_STATES}}}, "
            f"got {value!r}",
        }
    # Details go out as JSON: anything else (a datetime, a Decimal) is shown as text.
    details: dict[str, Any] = json.loads(json.dumps(dict(value), default=str))
    return details


def _event_data(record: PluginRecord) -> dict[str, Any]:
    return {
        "plugin": record.name,
        "version": record.manifest.version,
        "status": record.state.value,
        "error": record.error_message,
    }


def _as_permissions(result: Any) -> dict[str, str]:
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return {str(k): str(v) for k, v in result.items()}
    if isinstance(result, str):
        return {result: ""}
    return {str(name): "" for name in result}


def _attach_tables(metadata: Any, result: Any) -> None:
    """Tables returned (rather than defined on ``metadata``) join it too."""
    import sqlalchemy

    tables = [result] if isinstance(result, sqlalchemy.Table) else list(result or ())
    for table in tables:
        if not isinstance(table, sqlalchemy.Table):
            raise TypeError(f"register_models may only return tables, got {table!r}")
        if table.metadata is not metadata:
            table.to_metadata(metadata)


def _unmarked_hook_warnings(plugin: object, pm: pluggy.PluginManager) -> list[str]:
    warnings = []
    for name in hookspecs_names():
        value = getattr(plugin, name, None)
        if callable(value) and pm.parse_hookimpl_opts(plugin, name) is None:
            warnings.append(
                f"{name!r} looks like a hook but is not marked with @chatterfix.hookimpl"
            )
    return warnings


def _purge_modules(prefixes: Iterable[str]) -> dict[str, Any]:
    return {name: sys.modules.pop(name) for name in list(sys.modules) if _under(name, prefixes)}


def _reinstate_modules(prefixes: Iterable[str], saved: dict[str, Any]) -> None:
    """Forget a failed re-import and put the previous modules back."""
    _purge_modules(prefixes)
    sys.modules.update(saved)
