"""The hooks a ChatterFix plugin can implement.

Every function here is a specification: its name and argument names are part of the public
contract, and its docstring is the reference documentation. Implement a hook by decorating a
function of the same name with :data:`chatterfix.hookimpl`; an implementation may accept any
subset of the specified arguments, and may be a plain function or a coroutine function (the
platform awaits what needs awaiting).

The platform calls hooks one plugin at a time, so a hook that raises only affects the plugin
it belongs to: in the start sequence (``config_schema`` to ``startup``) that plugin is put in
state ``error`` with the message and traceback kept; a failing ``health_check`` counts as
unhealthy and a failing ``shutdown`` is recorded, the plugin still stopping. Everything else
keeps running. (Hooks that plugins declare for each other, called through
``platform.plugins.ahook``, follow pluggy: an exception reaches the caller.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    import sqlalchemy

    from chatterfix.platform import Platform

PROJECT_NAME = "chatterfix"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_routes(platform: Platform) -> Any:
    """Return the HTTP routes this plugin serves.

    Called each time the plugin starts (at platform start, on ``start`` and on ``reload``),
    before :func:`startup`; the gateway serves the routes while the plugin runs. Return a
    list of Starlette ``Route``/``Mount``/``WebSocketRoute`` objects with their full paths;
    by convention an app serves under ``/api/{plugin_name}/``. Two plugins claiming paths
    that one request could match (same method) is an error naming both plugins: the plugin
    starting later goes to state ``error`` and the other keeps its routes. Paths under
    ``/platform/`` and ``/health`` belong to the platform.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_middleware(platform: Platform) -> Any:
    """Return ASGI middleware to wrap around the whole gateway.

    Called each time the plugin starts, before :func:`startup`. Return a list of
    ``starlette.middleware.Middleware`` entries (or bare middleware classes taking the ASGI
    app as first argument); each is tried out at once, so a broken entry fails this plugin
    only. The middleware wraps the whole gateway while the plugin runs; it is built anew
    whenever the set of running plugins changes, so keep long-lived state elsewhere.
    Middleware should be pure ASGI; it sees every request, so keep it cheap. Plugin
    middleware is the ``plugins`` stage of the gateway's pipeline: inside the platform's
    request id and error handling, and by default inside the body limit, CORS, rate limit
    and auth stages (``gateway.middleware`` orders them), so it can rely on a request id and
    never has to render errors itself.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_event_handlers(platform: Platform) -> Any:
    """Subscribe this plugin's event handlers.

    Called when the plugin starts. Either return an iterable of ``(event_type, handler)``
    pairs (``event_type`` may be a wildcard such as ``cmms.work_order.*``), or call
    ``platform.events.subscribe`` yourself. Handlers may be sync or async. Subscriptions are
    owned by the plugin: they are removed when it stops and renewed when it reloads.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_models(metadata: sqlalchemy.MetaData) -> Any:
    """Declare this plugin's database tables.

    Called when the plugin starts, with the platform's shared SQLAlchemy ``MetaData``. Define
    ``sqlalchemy.Table`` objects on it (or return them); prefix table names with the plugin
    name to stay clear of other plugins.

    :param metadata: the shared ``sqlalchemy.MetaData`` of the platform.
    """


@hookspec
def register_migrations(platform: Platform) -> Any:
    """Return the migration steps of this plugin's tables, as ``{version: step}``.

    Called when the plugin starts, after :func:`register_models`. The tables' schema has a
    version, recorded per plugin in the database: 1 for the tables as first released, and
    each key here (2, 3, ...) is the version a step brings them to. The highest key is the
    version the plugin's current code expects. A step is a function taking an Alembic
    ``Operations`` object (``op.add_column(...)``, ``op.create_index(...)``,
    ``op.execute(...)``; on SQLite use ``op.batch_alter_table`` to alter or drop columns).

    On a fresh database the tables are created as :func:`register_models` declares them and
    no step runs; on a database at an older version the missing steps run in order. All of
    it happens in one transaction: a failing step leaves the database as it was and the
    plugin in state ``error``. A database newer than the code is refused (no downgrades).

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_permissions(platform: Platform) -> Any:
    """Declare the permissions this plugin checks.

    Called when the plugin starts. Return a mapping of permission name to description (for
    example ``{"work_order.create": "Create work orders"}``) or an iterable of names. They
    join the platform's permission catalog, next to those listed in the manifest.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_ai_providers(platform: Platform) -> Any:
    """Contribute AI providers.

    Called when the plugin starts. Return a provider object or a list of them; each must have
    a unique ``name`` attribute. They join ``platform.ai_providers`` by name.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def register_commands(cli: click.Group) -> Any:
    """Add commands to the ``chatterfix`` command line.

    Called when the command line is given a command name that is not built in (never for
    ``--help``, which stays instant). Add ``click`` commands or groups to ``cli`` with
    ``cli.add_command(...)`` or ``@cli.command()``; they join the root ``chatterfix``
    command. A name already taken is refused with a warning. Plugins that are disabled or
    failed to load add no commands.

    :param cli: a click group whose commands join the root ``chatterfix`` command.
    """


@hookspec
def config_schema() -> Any:
    """Return this plugin's configuration schema.

    Called when the plugin starts. Return a mapping of key to field description in the
    manifest's format (``{"ai_provider": {"type": "string", "default": "openai",
    "description": "..."}}``). It is merged over the manifest's ``config_schema``; defaults
    become readable as ``platform.config.get("{plugin_name}.{key}")``.
    """


@hookspec
def startup(platform: Platform) -> Any:
    """Prepare the plugin to serve.

    Called when the plugin starts: at platform start (in dependency order, after every plugin
    it depends on is running), on ``start`` and on ``reload`` — after its routes and
    middleware were collected and checked. May be async. Raising puts the plugin in state
    ``error``; its routes are not served, and :func:`shutdown` is not called.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def shutdown(platform: Platform) -> Any:
    """Release what :func:`startup` acquired.

    Called when the plugin stops: at platform shutdown (in reverse dependency order), on
    ``stop`` and after a ``reload`` has swapped in the new code. May be async. An exception
    is recorded; the plugin still ends up stopped.

    :param platform: the running :class:`~chatterfix.Platform`.
    """


@hookspec
def health_check(platform: Platform) -> Any:
    """Report the plugin's health.

    Called on ``GET /health`` and ``GET /platform/status``, concurrently for all running
    plugins and with a timeout. Return a mapping with at least ``status`` set to
    ``"healthy"``, ``"degraded"`` or ``"unhealthy"``; other keys are shown as details. May be
    async. Raising or timing out counts as ``unhealthy`` and is recorded as the plugin's last
    error; the plugin keeps running.

    :param platform: the running :class:`~chatterfix.Platform`.
    """
