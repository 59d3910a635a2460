"""Carrying events between processes: Redis Streams and NATS JetStream.

A transport publishes every event emitted in this process to a broker, and hands every event
another process published to the local bus. Delivery is at least once: an event is
acknowledged to the broker only after the local handlers ran, so a process that dies midway
gets it again; the bus drops an event id it has already delivered.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

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


T = TypeVar("T")

PUBLISH_BATCH = 500  # events per broker round trip at most
PUBLISH_TIMEOUT = 10.0  # seconds a batch may take before its emitters get an error
# After reading less than a full batch, a consumer waits this long (seconds) before reading
# again, so that under load it reads many events per round trip rather than one.
LINGER = 0.002


class _Entry(Generic[T]):
    __slots__ = ("abandoned", "error", "finished", "lead", "payload", "wake")

    def __init__(self, payload: T) -> None:
        self.payload = payload
        self.wake = anyio.Event()
        self.error: TransportError | None = None
        self.finished = False
        self.lead = False
        self.abandoned = False


class PublishBatcher(Generic[T]):
    """Group commit for publishing: events emitted while a batch is on its way to the
    broker go together in the next batch, in one round trip.

    There is no background task: the first emitter to find the broker idle sends a batch
    (the leader); those arriving meanwhile queue up, and when the batch is acknowledged the
    leader hands the next batch to the first of them. So ``await publish()`` returns once
    the broker has acknowledged the batch holding the payload (or raises
    :class:`TransportError` if it failed), batches leave strictly one after the other in
    arrival order, and a lone sequential emitter pays no more than one round trip.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[None]],
        *,
        describe: Callable[[BaseException], str],
        max_batch: int = PUBLISH_BATCH,
        timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        self._send = send
        self._describe = describe
        self.max_batch = max_batch
        self.timeout = timeout
        self._queue: collections.deque[_Entry[T]] = collections.deque()
        self._busy = False

    async def publish(self, payload: T) -> None:
        entry = _Entry(payload)
        self._queue.append(entry)
        if self._busy:
            try:
                await entry.wake.wait()
            except BaseException:
                # Cancelled while queued: the payload still leaves with a later batch, but
                # this task can no longer lead one.
                entry.abandoned = True
                if entry.lead and not entry.finished:
                    self._hand_over()
                raise
            if not entry.lead:
                self._raise_for(entry)
                return
        else:
            self._busy = True
        try:
            while not entry.finished:
                await self._send_next()
        finally:
            self._hand_over()
        self._raise_for(entry)

    async def _send_next(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        error: TransportError | None = None
        try:
            # Shielded: cancelling one emitter must not fail the others' events midway.
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout):
                await self._send([item.payload for item in batch])
        except TransportError as exc:
            error = exc
        except TimeoutError:
            error = TransportError(self._describe(TimeoutError(f"no answer in {self.timeout}s")))
        except Exception as exc:  # a client error the send did not translate
            error = TransportError(self._describe(exc))
        for item in batch:
            item.error = error
            item.finished = True
            item.wake.set()

    def _hand_over(self) -> None:
        """Make the first waiting emitter the next leader, or mark the broker idle."""
        for item in self._queue:
            if not item.abandoned and not item.finished:
                item.lead = True
                item.wake.set()
                return
        self._busy = False

    @staticmethod
    def _raise_for(entry: _Entry[T]) -> None:
        if entry.error is not None:
            raise entry.error


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
        linger: float = LINGER,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.origin = new_origin()
        self.claim_idle_ms = int(claim_idle * 1000)
        self.max_length = max_length
        self.batch = batch
        self.linger = linger
        self._redis: Any = None
        self._batcher = PublishBatcher(self._send, describe=self._failed)

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
        payload = json.dumps(to_cloudevent(event), separators=(",", ":"))
        await self._batcher.publish(payload)

    async def _send(self, payloads: list[str]) -> None:
        """Append a batch to the stream in one round trip (a pipeline, not a transaction:
        the entries need no atomicity, only their order, which one connection keeps)."""
        from redis.exceptions import RedisError

        try:
            if len(payloads) == 1:  # a lone event: a plain command costs less than a pipeline
                await self._redis.xadd(
                    self.stream,
                    {"event": payloads[0], "origin": self.origin},
                    maxlen=self.max_length,
                    approximate=True,
                )
                return
            pipeline = self._redis.pipeline(transaction=False)
            for payload in payloads:
                pipeline.xadd(
                    self.stream,
                    {"event": payload, "origin": self.origin},
                    maxlen=self.max_length,
                    approximate=True,
                )
            await pipeline.execute()
        except RedisError as exc:
            raise TransportError(self._failed(exc, len(payloads))) from None

    def _failed(self, exc: BaseException, count: int = 0) -> str:
        events = f"{count} event(s)" if count else "events"
        return f"redis {self.url}: publishing {events} failed: {exc}"

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
            read = 0
            for _stream, messages in entries:
                read += len(messages)
                await self._handle_batch(deliver, messages)
            if read < self.batch:
                await anyio.sleep(self.linger)

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
        self,
        url: str,
        *,
        stream: str,
        group: str,
        claim_idle: float = 30.0,
        batch: int = 100,
        linger: float = LINGER,
    ) -> None:
        self.url = url
        self.stream = re.sub(r"[^A-Za-z0-9_-]", "_", stream)
        self.prefix = ".".join(re.sub(r"[^A-Za-z0-9_-]", "_", part) for part in stream.split(":"))
        self.durable = re.sub(r"[^A-Za-z0-9_-]", "_", group)
        self.origin = new_origin()
        self.claim_idle = claim_idle
        self.batch = batch
        self.linger = linger
        self._nats: Any = None
        self._jetstream: Any = None
        self._batcher = PublishBatcher(self._send, describe=self._failed)

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
        payload = json.dumps(to_cloudevent(event), separators=(",", ":")).encode()
        await self._batcher.publish((f"{self.prefix}.{event.type}", event.id, payload))

    async def _send(self, messages: list[tuple[str, str, bytes]]) -> None:
        """Publish a batch without waiting between messages, then wait for every
        acknowledgement: one round trip for the batch, in publishing order."""
        from nats.errors import Error as NatsError

        if len(messages) == 1:  # a lone event: a plain request costs less
            subject, event_id, payload = messages[0]
            try:
                await self._jetstream.publish(
                    subject,
                    payload,
                    stream=self.stream,
                    headers={"Nats-Msg-Id": event_id, ORIGIN_HEADER: self.origin},
                )
            except NatsError as exc:
                raise TransportError(self._failed(exc, 1)) from None
            return
        pending: list[asyncio.Future[Any]] = []
        try:
            for subject, event_id, payload in messages:
                pending.append(
                    await self._jetstream.publish_async(
                        subject,
                        payload,
                        stream=self.stream,
                        headers={"Nats-Msg-Id": event_id, ORIGIN_HEADER: self.origin},
                    )
                )
            acks = await asyncio.gather(*pending, return_exceptions=True)
        except NatsError as exc:
            raise TransportError(self._failed(exc, len(messages))) from None
        finally:
            for future in pending:  # a timed-out batch must not hold the client's slots
                future.cancel()
        errors = [ack for ack in acks if isinstance(ack, BaseException)]
        if errors:
            raise TransportError(self._failed(errors[0], len(messages)))

    def _failed(self, exc: BaseException, count: int = 0) -> str:
        events = f"{count} event(s)" if count else "events"
        return f"nats {self.url}: publishing {events} failed: {exc}"

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
                if len(messages) < self.batch:
                    await anyio.sleep(self.linger)
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
