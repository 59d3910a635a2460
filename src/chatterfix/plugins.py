"""The plugin registry: discovery, validation, dependency order, lifecycle and health.

Hooks are called one plugin at a time (not through pluggy's all-at-once call) so that a
plugin whose hook raises is put in state ``error`` alone while every other plugin runs on.
"""

from __future__ import annotations

import difflib
import graphlib
import inspect
import logging
import sys
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
from chatterfix.context import current_plugin_owner, serving_routing
from chatterfix.events.catalog import SystemEvents
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
    last_health: dict[str, Any] | None = None

    @property
    def is_remote(self) -> bool:
        return self.plugin is None

    @property
    def hooks(self) -> list[str]:
        return sorted(self.hookimpls)

    def fail(self, message: str, tb: str = "") -> None:
        self.state = PluginState.ERROR
        self.error_message = message
        self.error_traceback = tb

    def summary(self) -> dict[str, Any]:
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
            "error_traceback": self.error_traceback,
            "warnings": self.warnings,
            "started_at": _iso(self.started_at),
            "last_heartbeat": _iso(self.last_heartbeat),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _now() -> datetime:
    return datetime.now(UTC)


def _short_traceback() -> str:
    return traceback.format_exc(limit=-8)


class PluginRegistry:
    """Finds, validates, orders, starts and stops the platform's plugins.

    Seed-compatible methods: ``register_plugin``, ``start_all_plugins``,
    ``get_plugin_status``.
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.load_errors: list[LoadError] = []
        self.start_order: list[str] = []
        self.ahook = AsyncHookRelay(self)

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
        for source in sources:
            for item in source:
                if isinstance(item, ManifestError):
                    self._load_error(LoadError("?", item.source, str(item)))
                else:
                    self.add_candidate(item)
        self._check_unknown_hooks()

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
            placeholder = structure_manifest({"name": candidate.name}, candidate.location)
            blocked = PluginRecord(
                candidate.name, candidate.origin, candidate.location, placeholder, candidate
            )
            blocked.state = PluginState.DISABLED
            self.records[candidate.name] = blocked
            return blocked
        record = self._load(candidate)
        if record is None or (record.plugin is not None and not self._register(record)):
            return None
        self.records[record.name] = record
        return record

    def _blocked_by_config(self, name: str) -> bool:
        config = self.platform.config
        # Block lists add up across layers: the environment can disable one more plugin
        # without repeating the config file's list.
        disabled = {item for _, names in config.layered("plugins.disabled") for item in names}
        only = config.get("plugins.only") or []
        return name in disabled or bool(only and name not in only)

    def _load(self, candidate: Candidate) -> PluginRecord | None:
        try:
            with self.platform.activated():
                loaded = candidate.load()
        except ManifestError as exc:
            self._load_error(LoadError(candidate.name, exc.source, str(exc)))
            return None
        except Exception as exc:
            self._load_error(
                LoadError(
                    candidate.name,
                    candidate.location,
                    f"import failed: {type(exc).__name__}: {exc}",
                    _short_traceback(),
                )
            )
            return None
        record = PluginRecord(
            loaded.manifest.name,
            candidate.origin,
            candidate.location,
            loaded.manifest,
            candidate,
            loaded.plugin,
        )
        if not loaded.manifest.enabled:
            record.state = PluginState.DISABLED
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
        known = list(hookspecs_names())
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
                self._load_error(LoadError(record.name, record.location, message))
                record.fail(message)

    def _load_error(self, error: LoadError) -> None:
        logger.error("plugin load error: %s (%s)", error.message, error.source)
        self.load_errors.append(error)
        if self.platform.config.get("plugins.strict"):
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
        assert record is not None
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

    # -- hook calls ----------------------------------------------------------------------

    async def call(self, record: PluginRecord, hook: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's implementations of ``hook``, awaiting async ones."""
        results = []
        token = current_plugin_owner.set(record)
        try:
            for impl in record.hookimpls.get(hook, ()):
                result = impl.function(*[kwargs[name] for name in impl.argnames])
                if inspect.isawaitable(result):
                    result = await result
                results.append(result)
        finally:
            current_plugin_owner.reset(token)
        return results

    # -- lifecycle -----------------------------------------------------------------------

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
        for name in self.resolve_order():
            record = self.records[name]
            if record.state is PluginState.DISCOVERED and record.manifest.auto_start:
                await self._start(record)
        self.platform.routes_changed()
        return {name: record.state.value for name, record in self.records.items()}

    async def stop_all_plugins(self) -> None:
        order = self.start_order or list(self.records)
        for name in reversed(order):
            record = self.records.get(name)
            if record is not None and record.state is PluginState.RUNNING:
                await self._stop(record)

    async def start_plugin(self, name: str) -> PluginRecord:
        record = self.get(name)
        if record.state is PluginState.RUNNING:
            return record
        if record.state is PluginState.DISABLED:
            raise PluginActionError(f"plugin {name!r} is disabled")
        if record.state is PluginState.ERROR and record.plugin is not None:
            # A fresh attempt: whatever failed before may have been fixed meanwhile.
            record.error_message = record.error_traceback = ""
        await self._start(record)
        self.platform.routes_changed()
        if record.state is PluginState.ERROR:
            raise PluginActionError(f"plugin {name!r} failed to start: {record.error_message}")
        return record

    async def stop_plugin(self, name: str) -> list[str]:
        """Stop a plugin and, first, every running plugin that depends on it."""
        record = self.get(name)
        if record.state is not PluginState.RUNNING:
            raise PluginActionError(f"plugin {name!r} is not running ({record.state.value})")
        stopped = []
        for dependent in self._dependents(name):
            if self.records[dependent].state is PluginState.RUNNING:
                stopped.append(dependent)
        stopped.append(name)
        for member in stopped:
            self.records[member].state = PluginState.STOPPING
        old_routes = self.platform.routes_changed()
        await self.platform.drain(old_routes)
        for member in stopped:
            await self._stop(self.records[member])
        return stopped

    async def reload_plugin(self, name: str) -> PluginRecord:
        """Import the plugin's code afresh and swap it in without failing a request.

        The new generation is started while the old one still serves; the gateway then swaps
        its routes in one step, and the old generation is shut down once its in-flight
        requests are done. If anything fails, the old generation keeps serving.
        """
        old = self.get(name)
        if old.state is PluginState.DISABLED:
            raise PluginActionError(f"plugin {name!r} is disabled")
        saved = _purge_modules(old.candidate.module_prefixes)
        new = self._load(old.candidate)
        if new is None or new.name != name:
            _purge_modules(old.candidate.module_prefixes)
            _restore_modules(saved)
            reason = (
                self.load_errors[-1].message
                if new is None
                else f"the manifest now names it {new.name!r}; restart the platform to rename"
            )
            raise PluginActionError(
                f"reload of {name!r} failed, previous code keeps running: {reason}"
            )
        if old.plugin is not None:
            self.pm.unregister(old.plugin)
        if new.plugin is not None and not self._register(new):
            self._reinstate(old, saved)
            raise PluginActionError(f"reload of {name!r} failed: {self.load_errors[-1].message}")
        self._check_unknown_hooks(new)
        if new.state is not PluginState.ERROR:
            await self._start(new, replacing=old)
        if new.state is not PluginState.RUNNING:
            self._undo(new)
            if new.plugin is not None:
                self.pm.unregister(new.plugin)
            self._reinstate(old, saved)
            raise PluginActionError(
                f"reload of {name!r} failed, previous code keeps running: {new.error_message}"
            )
        self.records[name] = new
        old_routes = self.platform.routes_changed()
        if old.state is PluginState.RUNNING:
            old.state = PluginState.STOPPING
            self.platform.spawn(self._retire, old, old_routes)
        return new

    async def _retire(self, old: PluginRecord, old_routes: object) -> None:
        serving_routing.set(None)  # this task serves no request: wait for all of them
        await self.platform.drain(old_routes)
        await self._stop(old, emit=False)

    def _reinstate(self, old: PluginRecord, saved: dict[str, Any]) -> None:
        _purge_modules(old.candidate.module_prefixes)
        _restore_modules(saved)
        if old.plugin is not None and not self.pm.is_registered(old.plugin):
            self.pm.register(old.plugin, name=old.name)

    def _dependents(self, name: str) -> list[str]:
        """Plugins depending on ``name``, directly or not, those furthest away first."""
        found: list[str] = []
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for other, record in self.records.items():
                needs = {req.name for req in record.manifest.requirements}
                if current in needs and other not in found:
                    found.append(other)
                    frontier.append(other)
        return list(reversed(found))

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
        problem = self._dependency_problem(record)
        if problem:
            record.fail(problem)
            await self._emit_error(record)
            return
        record.state = PluginState.STARTING
        platform = self.platform
        step = "config_schema"
        released_tables: list[Any] = []
        try:
            with platform.activated():
                schema = dict(record.manifest.config_schema)
                for extra in await self.call(record, "config_schema"):
                    schema.update(extra or {})
                platform.config.add_schema_defaults(record.name, schema)
                step = "register_models"
                metadata = platform.metadata
                released_tables = platform.release_tables(record.name)
                before = set(metadata.tables)
                for result in await self.call(record, "register_models", metadata=metadata):
                    _attach_tables(metadata, result)
                platform.claim_tables(record.name, set(metadata.tables) - before)
                step = "register_permissions"
                self._collect_permissions(record)
                for result in await self.call(record, "register_permissions", platform=platform):
                    platform.add_permissions(record, _as_permissions(result))
                step = "register_ai_providers"
                for result in await self.call(record, "register_ai_providers", platform=platform):
                    platform.add_ai_providers(record, result)
                step = "register_event_handlers"
                for result in await self.call(record, "register_event_handlers", platform=platform):
                    for event_type, handler in result or ():
                        platform.events.subscribe(event_type, handler, owner=record)
                step = "startup"
                await self.call(record, "startup", platform=platform)
                step = "register_routes"
                routes = await self._routes_of(record)
                step = "register_middleware"
                record.middleware = [
                    entry
                    for result in await self.call(record, "register_middleware", platform=platform)
                    for entry in (result or ())
                ]
        except Exception as exc:
            record.fail(f"{step} failed: {type(exc).__name__}: {exc}", _short_traceback())
            if step != "config_schema":
                platform.restore_tables(record.name, released_tables)
            self._undo(record)
            await self._emit_error(record)
            logger.error("plugin %s: %s", record.name, record.error_message)
            return
        conflict = self._route_conflict(routes, replacing or record)
        if conflict:
            path, method, owner = conflict
            record.fail(
                f"route {method} {path} of plugin {record.name!r} collides with plugin {owner!r}"
            )
            await self._stop(record, emit=False, final_state=PluginState.ERROR)
            await self._emit_error(record)
            return
        record.routes = routes
        record.state = PluginState.RUNNING
        record.started_at = record.last_heartbeat = _now()
        await platform.events.emit(
            SystemEvents.PLUGIN_STARTED, _event_data(record), source="platform"
        )

    async def _routes_of(self, record: PluginRecord) -> list[Any]:
        from starlette.routing import BaseRoute

        routes: list[Any] = []
        for result in await self.call(record, "register_routes", platform=self.platform):
            for route in result or ():
                if not isinstance(route, BaseRoute):
                    raise TypeError(f"register_routes must return Starlette routes, got {route!r}")
                routes.append(route)
        return routes

    def _route_conflict(
        self, routes: list[Any], replacing: PluginRecord
    ) -> tuple[str, str, str] | None:
        taken: dict[tuple[str, str], str] = {
            claim: "platform" for claim in self.platform.reserved_route_claims()
        }
        for other in self.records.values():
            if other.name == replacing.name or other.state is not PluginState.RUNNING:
                continue
            for route in other.routes:
                for claim in route_claims(route):
                    taken[claim] = other.name
        return find_conflict(routes, taken)

    def _collect_permissions(self, record: PluginRecord) -> None:
        self.platform.add_permissions(record, {name: "" for name in record.manifest.permissions})

    def _undo(self, record: PluginRecord) -> None:
        """Forget what a generation registered with the shared registries."""
        self.platform.events.unsubscribe_owner(record)
        self.platform.remove_contributions(record)

    async def _stop(
        self,
        record: PluginRecord,
        *,
        emit: bool = True,
        final_state: PluginState = PluginState.STOPPED,
    ) -> None:
        record.state = PluginState.STOPPING
        try:
            with self.platform.activated():
                await self.call(record, "shutdown", platform=self.platform)
        except Exception as exc:
            logger.error("plugin %s: shutdown failed: %s", record.name, exc)
            record.error_message = f"shutdown failed: {type(exc).__name__}: {exc}"
            record.error_traceback = _short_traceback()
        self.platform.events.unsubscribe_owner(record)
        self.platform.remove_contributions(record)
        record.state = final_state
        if final_state is PluginState.STOPPED:
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
        """Run every running plugin's ``health_check`` concurrently, with a timeout."""
        timeout = float(self.platform.config.get("plugins.health_timeout", 5.0))
        results: dict[str, dict[str, Any]] = {}

        async def check(record: PluginRecord) -> None:
            results[record.name] = await self._health_of(record, timeout)

        async with anyio.create_task_group() as group:
            for record in self.running():
                group.start_soon(check, record)
        for record in self.records.values():
            if record.name not in results:
                results[record.name] = {
                    "status": "unhealthy" if record.state is PluginState.ERROR else "unknown",
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
                    outcome = await self.call(record, "health_check", platform=self.platform)
                result = _valid_health(outcome[-1] if outcome else None)
            except TimeoutError:
                result = {"status": "unhealthy", "error": f"health check timed out ({limit}s)"}
            except Exception as exc:
                result = {"status": "unhealthy", "error": f"{type(exc).__name__}: {exc}"}
                record.error_message = f"health_check failed: {result['error']}"
                record.error_traceback = _short_traceback()
        if result["status"] != "unhealthy":
            record.last_heartbeat = _now()
        record.last_health = result
        return {**result, "state": record.state.value}


def _valid_health(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or value.get("status") not in HEALTH_STATES:
        return {
            "status": "unhealthy",
            "error": f"health_check must return {{'status': one of {HEALTH_STATES}}}, "
            f"got {value!r}",
        }
    return dict(value)


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


def hookspecs_names() -> Iterable[str]:
    return [name for name, value in vars(hookspecs).items() if hasattr(value, "chatterfix_spec")]


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
    removed = {}
    for prefix in prefixes:
        for module_name in list(sys.modules):
            if module_name == prefix or module_name.startswith(prefix + "."):
                removed[module_name] = sys.modules.pop(module_name)
    return removed


def _restore_modules(saved: dict[str, Any]) -> None:
    sys.modules.update(saved)


class AsyncHookRelay:
    """``registry.ahook.<name>(**kwargs)``: call a hook on every active plugin, awaiting
    async implementations, in pluggy's order (last registered first, honouring
    ``tryfirst``/``trylast``). For a ``firstresult`` hook the first non-``None`` *awaited*
    result wins — pluggy alone would stop at the first coroutine object.
    """

    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        caller = getattr(self._registry.pm.hook, name)

        async def call(**kwargs: Any) -> Any:
            firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
            results = []
            for impl in reversed(caller.get_hookimpls()):
                if impl.wrapper or impl.hookwrapper:
                    raise TypeError(f"hook wrappers are not supported in async calls ({name})")
                record = self._registry.records.get(impl.plugin_name)
                if record is not None and record.state not in (
                    PluginState.RUNNING,
                    PluginState.STARTING,
                ):
                    continue
                missing = [arg for arg in impl.argnames if arg not in kwargs]
                if missing:
                    raise TypeError(f"hook {name!r} call must provide argument(s) {missing}")
                result = impl.function(*[kwargs[arg] for arg in impl.argnames])
                if inspect.isawaitable(result):
                    result = await result
                if result is not None:
                    if firstresult:
                        return result
                    results.append(result)
            return None if firstresult else results

        return call
