"""Calling hooks: one plugin at a time (for containment), or all of them asynchronously."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio.to_thread
import pluggy

from chatterfix import hookspecs
from chatterfix.context import current_plugin_owner


class PluginExit(RuntimeError):
    """A plugin called ``sys.exit()`` inside a hook: contained like any other failure."""


def hookspecs_names() -> list[str]:
    """The names of the hooks ChatterFix itself specifies, in declaration order."""
    return [name for name, value in vars(hookspecs).items() if hasattr(value, "chatterfix_spec")]


async def call_impls(
    owner: object,
    impls: Iterable[pluggy.HookImpl],
    kwargs: Mapping[str, Any],
    *,
    sync_in_thread: bool = False,
) -> list[Any]:
    """Call hook implementations of one plugin generation (``owner``), awaiting async ones.

    ``sync_in_thread`` runs plain functions in a worker thread so that a time limit set by
    the caller can abandon them (used for health checks, which may block).
    """
    results = []
    token = current_plugin_owner.set(owner)
    try:
        for impl in impls:
            function: Callable[..., Any] = impl.function
            args = [kwargs[name] for name in impl.argnames]
            try:
                if sync_in_thread and not inspect.iscoroutinefunction(function):
                    result = await anyio.to_thread.run_sync(
                        functools.partial(function, *args), abandon_on_cancel=True
                    )
                else:
                    result = function(*args)
                if inspect.isawaitable(result):
                    result = await result
            except SystemExit as exc:
                # Plugin code must not end the gateway (argparse and click call sys.exit).
                raise PluginExit(f"the hook called sys.exit({exc.code!r})") from exc
            results.append(result)
    finally:
        current_plugin_owner.reset(token)
    return results


class AsyncHookRelay:
    """``registry.ahook.<name>(**kwargs)``: call a hook on every active plugin, awaiting
    async implementations, in pluggy's order (last registered first, honouring
    ``tryfirst``/``trylast``). For a ``firstresult`` hook the first non-``None`` *awaited*
    result wins — pluggy alone would stop at the first coroutine object.
    """

    def __init__(
        self, pm: pluggy.PluginManager, owner_of: Callable[[str, object], object | None]
    ) -> None:
        """``owner_of(name, plugin)`` gives the generation owning a plugin's calls, or
        ``None`` for a plugin that is not active."""
        self._pm = pm
        self._owner_of = owner_of

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        caller = getattr(self._pm.hook, name)

        async def call(**kwargs: Any) -> Any:
            firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
            results = []
            for impl in reversed(caller.get_hookimpls()):
                if impl.wrapper or impl.hookwrapper:
                    raise TypeError(f"hook wrappers are not supported in async calls ({name})")
                owner = self._owner_of(impl.plugin_name, impl.plugin)
                if owner is None:
                    continue
                missing = [arg for arg in impl.argnames if arg not in kwargs]
                if missing:
                    raise TypeError(f"hook {name!r} call must provide argument(s) {missing}")
                [result] = await call_impls(owner, [impl], kwargs)
                if result is not None:
                    if firstresult:
                        return result
                    results.append(result)
            return None if firstresult else results

        return call
