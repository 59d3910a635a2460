"""The parts of the events kept in the shared database, in the platform's lifespan: the
persisted history (``events.persist_history``) and the transactional outbox's relay."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.abc

from chatterfix.events.outbox import Outbox
from chatterfix.events.transports import default_group

if TYPE_CHECKING:
    from chatterfix.platform import Platform


class HistoryUnavailable(RuntimeError):
    """``events.persist_history`` is on and the database cannot be used."""


def producer_name(platform: Platform) -> str:
    """The name of this gateway process, stable across its restarts (``events.group``)."""
    config = platform.config
    return str(config.get("events.group")) or default_group(config.get("gateway.port"))


async def open_history(platform: Platform) -> None:
    """Before the plugins start: the persisted history, refilled into memory. Does nothing
    unless ``events.persist_history`` is on. Its writer starts with :func:`start`."""
    config = platform.config
    if not config.get("events.persist_history"):
        return
    from sqlalchemy.exc import SQLAlchemyError

    from chatterfix.events.store import HistoryStore

    store = HistoryStore(
        platform.database,
        retention=int(config.get("events.history_retention")),
        retention_days=float(config.get("events.history_retention_days")),
    )
    try:
        recent = await store.open(preload=int(config.get("events.history_size")))
    except (SQLAlchemyError, OSError) as exc:
        raise HistoryUnavailable(
            f"events.persist_history is on, but the database cannot be used: {exc}"
        ) from None
    platform.events.history.extend(recent)
    platform.events.store = store


async def start(
    platform: Platform, task_group: anyio.abc.TaskGroup, *, database_used: bool
) -> None:
    """Once the plugins have started and the broker is joined: the history's writer (what
    the plugins emitted while starting has waited, so as not to write alongside their
    migrations), and the outbox, whose relay runs at once when the platform has a database
    (what a previous run left is sent now), or else from the first ``emit_in``."""
    if platform.events.store is not None:
        await task_group.start(platform.events.store.run)

    def start_soon(function: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async def relay() -> None:
            with platform.activated():
                await function()

        # A fresh context: the relay outlives the request that may have started it.
        contextvars.Context().run(task_group.start_soon, relay)

    outbox = Outbox(
        platform.events,
        lambda: platform.database,
        producer=producer_name(platform),
        claim_idle=float(platform.config.get("events.claim_idle")),
        start_soon=start_soon,
    )
    platform.events.outbox = outbox
    if database_used or has_database(platform):
        outbox.start()


def has_database(platform: Platform) -> bool:
    """A database is configured, or the default one exists, without creating it."""
    config = platform.config
    if config.get("database.url") or os.environ.get("DATABASE_URL"):
        return True
    return (Path(str(config.get("platform.data_dir"))) / "chatterfix.db").exists()


async def close(platform: Platform) -> None:
    """Before the database closes: stop the relay, write the rest of the history."""
    bus = platform.events
    outbox, bus.outbox = bus.outbox, None
    if outbox is not None:
        await outbox.aclose()
    store, bus.store = bus.store, None
    if store is not None:
        await store.aclose()
