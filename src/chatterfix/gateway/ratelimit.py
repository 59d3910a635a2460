"""Rate limiting: token buckets per client, in memory or shared through Redis.

A :class:`~chatterfix.route_options.Limit` of ``N`` per ``period`` is a bucket holding at
most ``N`` tokens, refilled continuously at ``N / period`` tokens a second; a request takes
one token, and is refused with ``429`` when less than one is left. A client is its API token
(a digest of the bearer value, never the value itself), the authenticated user when the
``auth`` stage runs first, else its IP address.

The headers follow draft-ietf-httpapi-ratelimit-headers-06 (the last revision with separate
fields): ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds until
the bucket is full again) on every limited response, and ``RateLimit-Policy`` and
``Retry-After`` (seconds until a token is back) on a ``429`` as well. (Each header costs
the server about a microsecond to write: the policy, which never changes, is left to the
refusals that it explains.)
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from starlette.types import ASGIApp, Receive, Scope, Send

from chatterfix.gateway.errors import error_response
from chatterfix.gateway.routing import RESPONSE_HEADERS
from chatterfix.route_options import Limit

logger = logging.getLogger("chatterfix.gateway")

_AUTHORIZATION = b"authorization"
_BEARER = b"bearer "
TOKEN_KEYS_KEPT = 10_000
Clock = Callable[[], float]


@attrs.define(slots=True)
class Decision:
    """What a bucket said about one request."""

    allowed: bool
    remaining: int
    reset: int  # seconds until the bucket is full again
    retry_after: int  # seconds until one token is back (0 when allowed)


def decide(limit: Limit, tokens: float) -> Decision:
    """The decision for a bucket left with ``tokens`` (after taking one, when allowed)."""
    rate = limit.rate
    reset = math.ceil(max(limit.count - tokens, 0.0) / rate)
    return Decision(True, int(tokens), reset, 0)


def refuse(limit: Limit, tokens: float) -> Decision:
    rate = limit.rate
    reset = math.ceil(max(limit.count - tokens, 0.0) / rate)
    return Decision(False, 0, reset, max(1, math.ceil((1.0 - tokens) / rate)))


class Backend(Protocol):
    async def hit(self, key: str, limit: Limit) -> Decision: ...

    async def aclose(self) -> None: ...


class MemoryBackend:
    """Buckets in this process. ``clock`` (monotonic seconds) can be replaced in tests.

    At most ``max_keys`` buckets are kept: past that, full buckets are dropped (a full
    bucket is the same as none), then the oldest half if that was not enough.
    """

    name = "memory"

    def __init__(self, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, list[float]] = {}

    async def hit(self, key: str, limit: Limit) -> Decision:
        return self.take(key, limit)

    def take(self, key: str, limit: Limit) -> Decision:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now, limit)
            tokens = float(limit.count)
            bucket = self._buckets[key] = [tokens, now]
        else:
            elapsed = now - bucket[1] if now > bucket[1] else 0.0
            tokens = min(float(limit.count), bucket[0] + elapsed * limit.rate)
            bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return decide(limit, tokens - 1.0)
        bucket[0] = tokens
        return refuse(limit, tokens)

    def _prune(self, now: float, limit: Limit) -> None:
        full = [
            key
            for key, (tokens, at) in self._buckets.items()
            if tokens + (now - at) * limit.rate >= limit.count
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            for key in list(self._buckets)[: len(self._buckets) // 2 + 1]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

    async def aclose(self) -> None:
        return None


# One atomic step on Redis: refill from the server's own clock (replicas' clocks may
# differ), take a token if there is one, and keep the bucket only as long as it matters.
TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * rate)
  at = now
end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


class _Hit:
    """One request's check, on its way to Redis with others."""

    __slots__ = ("key", "limit", "reply")

    def __init__(self, key: str, limit: Limit) -> None:
        self.key = key
        self.limit = limit
        self.reply: Any = None


class RedisBackend:
    """Buckets in Redis, shared by every gateway replica using the same ``url`` and
    ``prefix``; each check runs :data:`TOKEN_BUCKET_LUA`.

    Checks are grouped: those arriving while a round trip is on its way go together in the
    next one, as one pipeline (redis-py spends some 60 µs of CPU on a lone command, some
    15 µs on each command of a pipeline). A lone request still pays one round trip only.

    When Redis cannot be reached, or does not answer within ``timeout`` seconds, requests
    are let through (failing open: a rate limiter must not take the gateway down with it)
    and a warning is logged, at most every ``warn_every`` seconds.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "chatterfix:ratelimit",
        *,
        warn_every: float = 10.0,
        timeout: float = 2.0,
    ) -> None:
        from chatterfix.events.transports import PublishBatcher

        self.url = url
        self.prefix = prefix
        self.warn_every = warn_every
        self._client: Any = None
        self._sha: str | None = None
        self._warned_at = -math.inf
        self.failures = 0
        self._batcher = PublishBatcher(
            self._run, describe=self._describe, max_batch=256, timeout=timeout
        )

    def _connect(self) -> Any:
        try:
            import redis.asyncio as redis
        except ImportError:  # pragma: no cover - the redis extra is missing
            from chatterfix.config import ConfigError

            raise ConfigError(
                "gateway.rate_limit.backend is a Redis URL but the redis package is not "
                "installed: pip install 'chatterfix[redis]'"
            ) from None
        self._client = redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return self._client

    async def _run(self, hits: list[_Hit]) -> None:
        """One round trip for ``hits``: the script by its digest, loaded first when Redis
        does not know it (a first use, a restarted or flushed Redis)."""
        from redis.exceptions import NoScriptError

        client = self._client or self._connect()
        for attempt in (1, 2):
            if self._sha is None:
                self._sha = await client.script_load(TOKEN_BUCKET_LUA)
            pipeline = client.pipeline(transaction=False)
            for hit in hits:
                limit = hit.limit
                pipeline.evalsha(
                    self._sha, 1, f"{self.prefix}:{hit.key}", limit.count, repr(limit.rate)
                )
            try:
                replies = await pipeline.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                self._sha = None
                continue
            for hit, reply in zip(hits, replies, strict=True):
                hit.reply = reply
            return

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    async def hit(self, key: str, limit: Limit) -> Decision:
        from chatterfix.events.transports import TransportError

        check = _Hit(key, limit)
        try:
            await self._batcher.publish(check)
        except TransportError as exc:  # any failure of Redis: let the request through
            self.failures += 1
            now = time.monotonic()
            if now - self._warned_at >= self.warn_every:
                self._warned_at = now
                logger.warning("rate limiting is off while Redis at %s fails: %s", self.url, exc)
            return Decision(True, limit.count, 0, 0)
        allowed, tokens = check.reply
        left = float(tokens)
        return decide(limit, left) if int(allowed) else refuse(limit, left)

    async def aclose(self) -> None:
        client, self._client, self._sha = self._client, None, None
        if client is not None:
            await client.aclose()


def backend_for(url: str, prefix: str) -> Backend:
    """The backend ``gateway.rate_limit.backend`` names: ``memory`` or a Redis URL."""
    if url in ("", "memory"):
        return MemoryBackend()
    from chatterfix.config import ConfigError

    if url.startswith(("redis://", "rediss://", "unix://")):
        if importlib.util.find_spec("redis") is None:  # say so at start, not per request
            raise ConfigError(
                f"gateway.rate_limit.backend = {url!r} needs the redis package: "
                "pip install 'chatterfix[redis]'"
            )
        return RedisBackend(url, prefix)

    raise ConfigError(f"gateway.rate_limit.backend = {url!r}: expected 'memory' or a redis:// URL")


class RateLimiter:
    """The gateway's buckets; they outlive routing generations. ``backend`` may be
    replaced (tests give the memory backend a clock of their own)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Bearer value -> its client key: a digest per request costs more than a lookup.
        self._token_keys: dict[bytes, str] = {}

    def client_key(self, scope: Scope) -> str:
        """Who a request counts against: the authenticated user, the bearer token
        (digested: tokens are never kept), else the client's address."""
        state = scope.get("state")
        if state:
            user = state.get("user")
            if user is not None:
                return f"user:{user.id}"
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION:
                if value[:7].lower() == _BEARER:
                    key = self._token_keys.get(value)
                    if key is None:
                        if len(self._token_keys) >= TOKEN_KEYS_KEPT:
                            self._token_keys.clear()
                        digest = hashlib.blake2b(value[7:].strip(), digest_size=12).hexdigest()
                        key = self._token_keys[value] = f"token:{digest}"
                    return key
                break
        client = scope.get("client")
        return f"ip:{client[0]}" if client else "ip:unknown"

    async def aclose(self) -> None:
        await self.backend.aclose()


class RateLimit:
    """The ``rate_limit`` stage: one bucket per client for the default limit, and one per
    client and route for routes with a limit of their own."""

    __slots__ = ("_fixed", "app", "default", "limiter", "options")

    def __init__(
        self, app: ASGIApp, limiter: RateLimiter, default: Limit | None, options: Any
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.default = default
        self.options = options  # RouteOptionsTable or None
        # Each limit's RateLimit-Limit and RateLimit-Policy headers, encoded once.
        self._fixed: dict[int, tuple[tuple[bytes, bytes], tuple[bytes, bytes]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.default
        bucket = "*"
        if self.options is not None:
            found = self.options.resolve(scope)
            if found is not None and found.has_rate_limit:
                limit = found.rate_limit
                bucket = found.bucket
        if limit is None:
            await self.app(scope, receive, send)
            return
        limiter = self.limiter
        key = f"{bucket}:{limiter.client_key(scope)}"
        backend = limiter.backend
        if type(backend) is MemoryBackend:  # no coroutine for what never waits
            decision = backend.take(key, limit)
        else:
            decision = await backend.hit(key, limit)
        fixed = self._fixed.get(id(limit))
        if fixed is None:
            fixed = self._fixed[id(limit)] = (
                (b"ratelimit-limit", str(limit.count).encode()),
                (b"ratelimit-policy", limit.policy.encode()),
            )
        headers = [
            fixed[0],
            (b"ratelimit-remaining", str(decision.remaining).encode()),
            (b"ratelimit-reset", str(decision.reset).encode()),
        ]
        if not decision.allowed:
            headers.append(fixed[1])  # the policy, where it explains a refusal
            wait = str(decision.retry_after)
            response = error_response(
                429,
                f"rate limit of {limit} exceeded; retry in {wait} s",
                "rate_limited",
                {"Retry-After": wait},
                limit=str(limit),
                retry_after=decision.retry_after,
            )
            response.raw_headers.extend(headers)
            await response(scope, receive, send)
            return

        # The routing layer adds them to the response (see RESPONSE_HEADERS).
        scope[RESPONSE_HEADERS] = headers
        await self.app(scope, receive, send)
