"""The shared registry in Redis, so that several gateway replicas route to the same instances.

Three keys under the configured prefix:

* ``<prefix>:instances`` (hash): ``service\\nurl`` -> the registration as JSON, with its
  expiry (wall-clock seconds) when it has a time-to-live;
* ``<prefix>:health`` (hash): ``service\\nurl`` -> ``"1|<until>|<reason>"`` (healthy) or
  ``"0|<until>|<reason>"`` (unhealthy, not to be re-admitted before ``until``);
* ``<prefix>:version`` (counter): bumped by every change, so a replica polls one small key
  and reads the hashes only when something changed.

Changes of health and expiries go through Lua scripts that change the state only if it is
not already so: of several replicas noticing the same failure, exactly one makes the change,
and only that one emits the event.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from chatterfix.events.transports import TransportError

# KEYS: health, version, instances; ARGV: field, new value. Changes the healthy flag only if
# it differs (and the instance is still registered); 1 when this call changed it.
SET_HEALTH = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and string.sub(current, 1, 1) == string.sub(ARGV[2], 1, 1) then return 0 end
if (not current) and string.sub(ARGV[2], 1, 1) == '1' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""

# KEYS: instances, health, version; ARGV: field, now. Removes the registration only if it is
# still expired (a renewal may have come through another replica); 1 when removed.
EXPIRE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local data = cjson.decode(current)
local expires = data['expires_at']
if expires == nil or expires == cjson.null or tonumber(expires) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""


class RegistryUnavailable(RuntimeError):
    """The shared registry (Redis) cannot be reached."""


@attrs.frozen
class Health:
    healthy: bool
    until: float = 0.0
    reason: str = ""

    def encode(self) -> str:
        return f"{1 if self.healthy else 0}|{self.until}|{self.reason}"

    @classmethod
    def decode(cls, value: str) -> Health:
        flag, until, reason = [*value.split("|", 2), "", ""][:3]
        try:
            moment = float(until)
        except ValueError:
            moment = 0.0
        return cls(flag == "1", moment, reason)


@attrs.frozen
class Snapshot:
    version: int
    registrations: dict[str, dict[str, Any]]
    health: dict[str, Health]


class RedisStore:
    """The registry's shared state in one Redis database."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.instances_key = f"{prefix}:instances"
        self.health_key = f"{prefix}:health"
        self.version_key = f"{prefix}:version"
        self._redis: Any = None
        self._set_health: Any = None
        self._expire: Any = None

    async def open(self) -> None:
        try:
            import redis.asyncio as redis
            from redis.exceptions import RedisError
        except ImportError:
            raise TransportError(
                "discovery.backend is a redis:// URL but redis is not installed: "
                "pip install 'chatterfix[redis]'"
            ) from None
        client = redis.from_url(self.url, decode_responses=True)
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise RegistryUnavailable(
                f"discovery backend {self.url} is unreachable: {exc}"
            ) from None
        self._redis = client
        self._set_health = client.register_script(SET_HEALTH)
        self._expire = client.register_script(EXPIRE)

    async def aclose(self) -> None:
        if self._redis is not None:
            client, self._redis = self._redis, None
            await client.aclose()

    async def put(self, key: str, registration: dict[str, Any]) -> bool:
        """Write a registration; True when it is new (not a renewal)."""
        pipeline = self._redis.pipeline(transaction=True)
        pipeline.hset(self.instances_key, key, json.dumps(registration))
        pipeline.incr(self.version_key)
        created, _ = await pipeline.execute()
        return bool(created)

    async def remove(self, key: str) -> bool:
        pipeline = self._redis.pipeline(transaction=True)
        pipeline.hdel(self.instances_key, key)
        pipeline.hdel(self.health_key, key)
        pipeline.incr(self.version_key)
        removed, _, _ = await pipeline.execute()
        return bool(removed)

    async def set_health(self, key: str, health: Health) -> bool:
        """Record a change of health; True only for the replica that made the change."""
        changed = await self._set_health(
            keys=[self.health_key, self.version_key, self.instances_key],
            args=[key, health.encode()],
        )
        return bool(changed)

    async def expire(self, key: str, now: float) -> bool:
        removed = await self._expire(
            keys=[self.instances_key, self.health_key, self.version_key], args=[key, now]
        )
        return bool(removed)

    async def version(self) -> int:
        return int(await self._redis.get(self.version_key) or 0)

    async def snapshot(self) -> Snapshot:
        pipeline = self._redis.pipeline(transaction=True)
        pipeline.get(self.version_key)
        pipeline.hgetall(self.instances_key)
        pipeline.hgetall(self.health_key)
        version, instances, health = await pipeline.execute()
        registrations: dict[str, dict[str, Any]] = {}
        for key, value in instances.items():
            try:
                registrations[key] = json.loads(value)
            except ValueError:
                continue
        return Snapshot(
            int(version or 0),
            registrations,
            {key: Health.decode(value) for key, value in health.items()},
        )
