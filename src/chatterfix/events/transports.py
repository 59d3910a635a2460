"""Carrying events between processes: Redis Streams and NATS JetStream.

A transport publishes every event emitted in this process to a broker, and hands every event
another process published to the local bus. Delivery is at least once: an event is
acknowledged to the broker only after the local handlers ran, so a process that dies midway
gets it again; the bus drops an event id it has already delivered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from chatterfix.events.model import Event, EventError, from_cloudevent, to_cloudevent

logger = logging.getLogger("chatterfix.events")

Deliver = Callable[[Event], Awaitable[None]]


class TransportError(RuntimeError):
    """The broker could not be reached or refused an operation."""


class Transport(Protocol):
    """What the bus needs from a broker."""

    name: str

    async def open(self) -> None:
        """Connect, and create what the consumer needs (stream, group)."""

    async def publish(self, event: Event) -> None:
        """Send one event to every other process."""

    async def consume(
        self, deliver: Deliver, *, task_status: anyio.abc.TaskStatus[None] = ...
    ) -> None:
        """Hand incoming events to ``deliver`` until cancelled; acknowledge each after."""

    async def aclose(self) -> None:
        """Disconnect."""


def missing_client(scheme: str, package: str) -> TransportError:
    return TransportError(
        f"events.backend is a {scheme}:// URL but {package} is not installed: "
        f"pip install 'chatterfix[{scheme}]'"
    )


def new_origin() -> str:
    """Marks what one transport published, so that its consumer can acknowledge its own
    events without reading them: the local subscribers have had them already."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def default_group(port: object) -> str:
    """A consumer group per gateway process: host and port identify it across restarts."""
    return f"{socket.gethostname()}-{port}"


class RedisStreamsTransport:
    """Redis Streams: one stream, one consumer group per process (so that every process
    receives every event), explicit ``XACK`` after handling, and entries left pending by a
    consumer that died re-claimed with ``XAUTOCLAIM`` once idle for ``claim_idle`` seconds.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        stream: str = "chatterfix:events",
        group: str,
        claim_idle: float = 30.0,
        max_length: int = 100_000,
        batch: int = 100,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.origin = new_origin()
        self.claim_idle_ms = int(claim_idle * 1000)
        self.max_length = max_length
        self.batch = batch
        self._redis: Any = None

    async def open(self) -> None:
        try:
            import redis.asyncio as redis
            from redis.exceptions import RedisError, ResponseError
        except ImportError:
            raise missing_client("redis", "redis") from None

        self._redis = redis.from_url(self.url)
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists: resume where it left off
                raise TransportError(f"redis {self.url}: {exc}") from None
        except RedisError as exc:
            raise TransportError(f"redis {self.url} is unreachable: {exc}") from None

    async def publish(self, event: Event) -> None:
        from redis.exceptions import RedisError

        payload = json.dumps(to_cloudevent(event), separators=(",", ":"))
        try:
            await self._redis.xadd(
                self.stream,
                {"event": payload, "origin": self.origin},
                maxlen=self.max_length,
                approximate=True,
            )
        except RedisError as exc:
            raise TransportError(
                f"redis {self.url}: publishing {event.type} failed: {exc}"
            ) from None

    async def consume(
        self,
        deliver: Deliver,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        from redis.exceptions import RedisError

        task_status.started()
        pause = 0.1
        while True:
            try:
                await self._consume_until_error(deliver)
            except RedisError as exc:
                # The broker went away: keep the gateway up, retry with growing pauses.
                logger.error("redis %s: %s; retrying in %.1fs", self.url, exc, pause)
                await anyio.sleep(pause)
                pause = min(pause * 2, 10.0)

    async def _consume_until_error(self, deliver: Deliver) -> None:
        await self._claim_stale(deliver)
        while True:
            entries = await self._redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=1000
            )
            if not entries:
                await self._claim_stale(deliver)  # quiet moment: look for orphaned entries
                continue
            for _stream, messages in entries:
                await self._handle_batch(deliver, messages)

    async def _claim_stale(self, deliver: Deliver) -> None:
        """Take over entries another consumer of this group read but never acknowledged."""
        start = "0-0"
        while True:
            reply = await self._redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.batch,
            )
            start, messages = reply[0], reply[1]
            await self._handle_batch(deliver, messages)
            if start in (b"0-0", "0-0"):
                return

    async def _handle_batch(self, deliver: Deliver, messages: list[Any]) -> None:
        """Deliver a batch, then acknowledge it in one round trip: a crash in between means
        at most this batch comes again (and the bus drops what it already delivered)."""
        for message_id, fields in messages:
            await self._handle(deliver, message_id, fields)
        if messages:
            await self._redis.xack(self.stream, self.group, *[item[0] for item in messages])

    async def _handle(self, deliver: Deliver, message_id: Any, fields: dict[Any, Any]) -> None:
        if not fields:  # an entry trimmed from the stream comes back empty
            return
        if (fields.get(b"origin") or b"").decode() == self.origin:
            return  # our own: the local subscribers had it when it was emitted
        raw = fields.get(b"event") or fields.get("event") or b""
        try:
            event = from_cloudevent(json.loads(raw))
        except (TypeError, ValueError, EventError) as exc:
            # Unreadable: no retry will help; log it and let the stream move on.
            logger.error("dropping unreadable entry %s from %s: %s", message_id, self.stream, exc)
        else:
            await deliver(event)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


ORIGIN_HEADER = "Chatterfix-Origin"


class NatsJetStreamTransport:
    """NATS JetStream: one stream (subjects ``<prefix>.<event type>``), a durable pull
    consumer per process (so that every process receives every event), explicit acks, and
    redelivery of what a dead consumer left unacknowledged after ``claim_idle`` seconds.
    Publishing sets ``Nats-Msg-Id`` to the event id, so the server drops a repeated publish.
    """

    name = "nats"

    def __init__(
        self, url: str, *, stream: str, group: str, claim_idle: float = 30.0, batch: int = 100
    ) -> None:
        self.url = url
        self.stream = re.sub(r"[^A-Za-z0-9_-]", "_", stream)
        self.prefix = ".".join(re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in stream.split(":"))
        self.durable = re.sub(r"[^A-Za-z0-9_-]", "_", group)
        self.origin = new_origin()
        self.claim_idle = claim_idle
        self.batch = batch
        self._nats: Any = None
        self._jetstream: Any = None

    async def open(self) -> None:
        try:
            import nats
            from nats.errors import Error as NatsError
            from nats.js.errors import NotFoundError
        except ImportError:
            raise missing_client("nats", "nats-py") from None
        await self._check_reachable()
        try:
            # Reconnect for as long as the gateway runs; the check above failed fast instead.
            self._nats = await nats.connect(
                self.url, connect_timeout=5, max_reconnect_attempts=-1, allow_reconnect=True
            )
        except (OSError, NatsError) as exc:
            raise TransportError(f"nats {self.url} is unreachable: {exc}") from None
        self._jetstream = self._nats.jetstream()
        try:
            await self._jetstream.stream_info(self.stream)
        except NotFoundError:
            await self._jetstream.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"])

    async def _check_reachable(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        try:
            with anyio.fail_after(5):
                connection = await anyio.connect_tcp(
                    parts.hostname or "127.0.0.1", parts.port or 4222
                )
            await connection.aclose()
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"nats {self.url} is unreachable: {exc}") from None

    async def publish(self, event: Event) -> None:
        from nats.errors import Error as NatsError

        payload = json.dumps(to_cloudevent(event), separators=(",", ":")).encode()
        try:
            await self._jetstream.publish(
                f"{self.prefix}.{event.type}",
                payload,
                stream=self.stream,
                headers={"Nats-Msg-Id": event.id, ORIGIN_HEADER: self.origin},
            )
        except NatsError as exc:
            raise TransportError(
                f"nats {self.url}: publishing {event.type} failed: {exc}"
            ) from None

    async def consume(
        self,
        deliver: Deliver,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as FetchTimeout
        from nats.js.api import ConsumerConfig

        subscription = await self._jetstream.pull_subscribe(
            f"{self.prefix}.>",
            durable=self.durable,
            stream=self.stream,
            config=ConsumerConfig(ack_wait=self.claim_idle),
        )
        task_status.started()
        while True:
            try:
                messages = await subscription.fetch(self.batch, timeout=1)
                for message in messages:
                    await self._handle(deliver, message)
            except FetchTimeout:
                continue
            except NatsError as exc:
                if self._nats is None or self._nats.is_closed:
                    return  # shutting down
                logger.error("nats %s: %s; retrying", self.url, exc)
                await anyio.sleep(1)

    async def _handle(self, deliver: Deliver, message: Any) -> None:
        if (message.headers or {}).get(ORIGIN_HEADER) != self.origin:  # not our own event
            try:
                event = from_cloudevent(json.loads(message.data))
            except (ValueError, EventError) as exc:
                logger.error("dropping unreadable message from %s: %s", self.stream, exc)
            else:
                await deliver(event)
        await message.ack()

    async def aclose(self) -> None:
        if self._nats is not None:
            await self._nats.close()
            self._nats = None


def transport_for(backend: str, *, group: str, stream: str, claim_idle: float) -> Transport | None:
    """The transport named by ``events.backend``: ``memory`` (none), or a broker URL."""
    if backend in ("", "memory"):
        return None
    if backend.startswith(("redis://", "rediss://", "unix://")):
        return RedisStreamsTransport(backend, stream=stream, group=group, claim_idle=claim_idle)
    if backend.startswith(("nats://", "tls://")):
        return NatsJetStreamTransport(backend, stream=stream, group=group, claim_idle=claim_idle)
    raise TransportError(
        f"events.backend = {backend!r}: expected 'memory', a redis:// URL or a nats:// URL"
    )
