"""Users, roles, permissions and API tokens (``platform.auth``).

Passwords are hashed with Argon2id (argon2-cffi). API tokens are 256-bit random strings,
shown once when issued; the database keeps only their SHA-256 digest, which is enough for
secrets this long and lets a token be found by an index lookup instead of a scan.
Verified tokens are cached for ``auth.token_cache_seconds`` so that a request carrying a
token costs no database round trip; revoking a token or changing a user's roles clears
this replica's cache at once, other replicas within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import sqlalchemy as sa

from chatterfix.permissions import ADMIN_PERMISSION, grants
from chatterfix.services.schema import SchemaChange, apply_schema

if TYPE_CHECKING:
    from argon2 import PasswordHasher

    from chatterfix.config import Config
    from chatterfix.services.database import Database

logger = logging.getLogger("chatterfix.auth")

ADMIN_ROLE = "admin"
PLATFORM_PERMISSIONS = {
    ADMIN_PERMISSION: "Manage the platform: plugins, configuration, events, services, users",
}
TOKEN_PREFIX = "cfx_"
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")

metadata = sa.MetaData()
users = sa.Table(
    "chatterfix_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("username", sa.String(100), nullable=False, unique=True),
    sa.Column("email", sa.String(200)),
    sa.Column("full_name", sa.String(200)),
    sa.Column("password_hash", sa.String(200)),
    sa.Column("is_active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
roles = sa.Table(
    "chatterfix_roles",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("description", sa.String(300), nullable=False, default=""),
    sa.Column("permissions", sa.JSON, nullable=False),
)
user_roles = sa.Table(
    "chatterfix_user_roles",
    metadata,
    sa.Column(
        "user_id", sa.Integer, sa.ForeignKey(users.c.id, ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "role", sa.String(100), sa.ForeignKey(roles.c.name, ondelete="CASCADE"), primary_key=True
    ),
)
api_tokens = sa.Table(
    "chatterfix_api_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(100), nullable=False, default=""),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(12), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
)


class AuthError(Exception):
    """An auth operation that cannot be done; the message says why."""


class LoginThrottled(AuthError):
    """Too many failed logins for a user name or a client; retry after ``retry_after``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


@attrs.frozen
class User:
    """A user as the platform sees it: identity, roles and what they may do."""

    id: int
    username: str
    email: str | None = None
    full_name: str | None = None
    roles: tuple[str, ...] = ()
    permissions: frozenset[str] = frozenset()
    is_active: bool = True
    created_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.has_permission(ADMIN_PERMISSION)

    def has_permission(self, permission: str) -> bool:
        return self.is_active and grants(self.permissions, permission)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "full_name": self.full_name,
            "roles": list(self.roles),
            "permissions": sorted(self.permissions),
            "is_active": self.is_active,
            "created_at": _iso(self.created_at),
        }

    def __getitem__(self, key: str) -> Any:
        # The original platform handed users around as dicts: user["id"] keeps working.
        return self.to_dict()[key]


@attrs.frozen
class TokenInfo:
    """An API token's record; never the token itself."""

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not _expired(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
            "active": self.active,
        }


@attrs.frozen
class IssuedToken:
    """A token just issued: ``token`` is shown this once and stored only as a digest."""

    token: str = attrs.field(repr=False)
    info: TokenInfo

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, **self.info.to_dict()}


@attrs.frozen
class _Cached:
    """A verification result (``user`` is ``None`` for a refused token) and until when
    it may be trusted."""

    user: User | None
    token_id: int | None
    expires_at: datetime | None
    until: float


class LoginThrottle:
    """Failed logins per key in a sliding window: ``attempts`` per user name, four times as
    many per client address (several people may share one address behind a NAT)."""

    def __init__(self, attempts: int, window: float, clock: Callable[[], float]) -> None:
        self.attempts = attempts
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def check(self, *keys: str) -> None:
        now = self._clock()
        for key in keys:
            failures = self._recent(key, now)
            limit = self.attempts * (4 if key.startswith("client:") else 1)
            if len(failures) >= limit:
                raise LoginThrottled(max(1.0, failures[0] + self.window - now))

    def failed(self, *keys: str) -> None:
        now = self._clock()
        if len(self._failures) > 100_000:  # bounded memory under a spray of user names
            self._failures.clear()
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthService:
    """The platform's auth service (``platform.auth``, the seed's ``shared_services.auth``).

    Its tables are created on first use, so a platform that never authenticates anyone
    never touches the database for it.
    """

    OWNER = "chatterfix.auth"

    def __init__(
        self,
        database: Callable[[], Database],
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._config = config
        self._clock = clock
        self._ready = False
        self._ready_lock = anyio.Lock()
        self._cache: dict[str, _Cached] = {}
        self._lookups: dict[str, anyio.Event] = {}
        self._hasher: PasswordHasher | None = None
        self._dummy_hash: str | None = None
        self.throttle = LoginThrottle(
            int(config.get("auth.login_attempts")),
            float(config.get("auth.login_window")),
            clock,
        )

    # -- schema ------------------------------------------------------------------------------

    async def ensure_schema(self) -> SchemaChange | None:
        """Create the auth tables and the ``admin`` role if they are missing."""
        if self._ready:
            return None
        async with self._ready_lock:
            if self._ready:
                return None
            async with self._database().transaction() as connection:
                change = await connection.run_sync(
                    apply_schema, self.OWNER, metadata.sorted_tables, {}
                )
                present = await connection.scalar(
                    sa.select(sa.func.count()).where(roles.c.name == ADMIN_ROLE)
                )
                if not present:
                    await connection.execute(
                        roles.insert().values(
                            name=ADMIN_ROLE, description="Everything", permissions=["*"]
                        )
                    )
            self._ready = True
            return change

    async def _engine(self) -> Any:
        await self.ensure_schema()
        return self._database().engine

    async def _transaction(self) -> AbstractAsyncContextManager[Any]:
        """A transaction meant to write (see ``Database.transaction``)."""
        await self.ensure_schema()
        return self._database().transaction()

    # -- users -------------------------------------------------------------------------------

    async def create_user(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        password: str | None = None,
        roles: Iterable[str] = (),
        **fields: Any,
    ) -> User:
        """Create a user from the original platform's dict form (``username``, ``email``,
        ``full_name``; also ``password`` and ``roles``) or keyword arguments."""
        values = {**(data or {}), **fields}
        password = values.pop("password", password)
        role_names = list(values.pop("roles", roles) or ())
        username = str(values.pop("username", "") or "")
        if not _USERNAME.fullmatch(username):
            raise AuthError(
                f"invalid username {username!r}: 1-100 letters, digits and . _ @ - "
                "(starting with a letter or digit)"
            )
        unknown = set(values) - {"email", "full_name", "is_active"}
        if unknown:
            raise AuthError(f"unknown user field(s): {', '.join(sorted(unknown))}")
        password_hash = await self._hash(password) if password else None
        async with await self._transaction() as connection:
            taken = await connection.scalar(
                sa.select(users.c.id).where(sa.func.lower(users.c.username) == username.lower())
            )
            if taken is not None:
                raise AuthError(f"a user named {username!r} already exists")
            user_id = (
                await connection.execute(
                    users.insert().values(
                        username=username,
                        email=values.get("email"),
                        full_name=values.get("full_name"),
                        is_active=bool(values.get("is_active", True)),
                        password_hash=password_hash,
                        created_at=_now(),
                    )
                )
            ).inserted_primary_key[0]
            for role in role_names:
                await self._add_role(connection, user_id, role)
        logger.info("user %s created (id %d)", username, user_id)
        user = await self.get_user(user_id)
        assert user is not None
        return user

    async def get_user(self, user_id: int) -> User | None:
        engine = await self._engine()
        async with engine.connect() as connection:
            return await _load_user(connection, users.c.id == user_id)

    async def get_user_by_name(self, username: str) -> User | None:
        engine = await self._engine()
        async with engine.connect() as connection:
            return await _load_user(connection, sa.func.lower(users.c.username) == username.lower())

    async def list_users(self) -> list[User]:
        engine = await self._engine()
        async with engine.connect() as connection:
            ids = (await connection.scalars(sa.select(users.c.id).order_by(users.c.id))).all()
            found = [await _load_user(connection, users.c.id == user_id) for user_id in ids]
        return [user for user in found if user is not None]

    async def set_password(self, user_id: int, password: str) -> None:
        password_hash = await self._hash(password)
        await self._update_user(user_id, password_hash=password_hash)

    async def set_active(self, user_id: int, active: bool) -> None:
        await self._update_user(user_id, is_active=active)

    async def _update_user(self, user_id: int, **values: Any) -> None:
        async with await self._transaction() as connection:
            result = await connection.execute(
                users.update().where(users.c.id == user_id).values(**values)
            )
        if result.rowcount == 0:
            raise AuthError(f"no user with id {user_id}")
        self._cache.clear()

    # -- roles and permissions ---------------------------------------------------------------

    async def create_role(
        self, name: str, permissions: Iterable[str], description: str = ""
    ) -> None:
        """Create a role, or replace the permissions of an existing one."""
        granted = sorted(set(permissions))
        async with await self._transaction() as connection:
            exists = await connection.scalar(sa.select(roles.c.name).where(roles.c.name == name))
            values = {"description": description, "permissions": granted}
            if exists is None:
                await connection.execute(roles.insert().values(name=name, **values))
            else:
                await connection.execute(roles.update().where(roles.c.name == name).values(values))
        self._cache.clear()

    async def list_roles(self) -> dict[str, list[str]]:
        engine = await self._engine()
        async with engine.connect() as connection:
            rows = await connection.execute(sa.select(roles.c.name, roles.c.permissions))
            return {name: list(permissions) for name, permissions in rows}

    async def assign_role(self, user_id: int, role: str) -> None:
        async with await self._transaction() as connection:
            await self._add_role(connection, user_id, role)
        self._cache.clear()

    async def remove_role(self, user_id: int, role: str) -> None:
        async with await self._transaction() as connection:
            await connection.execute(
                user_roles.delete().where(
                    user_roles.c.user_id == user_id, user_roles.c.role == role
                )
            )
        self._cache.clear()

    async def _add_role(self, connection: Any, user_id: int, role: str) -> None:
        if await connection.scalar(sa.select(roles.c.name).where(roles.c.name == role)) is None:
            raise AuthError(f"no role named {role!r}")
        held = await connection.scalar(
            sa.select(sa.func.count()).where(
                user_roles.c.user_id == user_id, user_roles.c.role == role
            )
        )
        if not held:
            await connection.execute(user_roles.insert().values(user_id=user_id, role=role))

    async def check_permission(self, user_id: int, permission: str) -> bool:
        """Whether the (active) user holds ``permission`` through one of their roles."""
        user = await self.get_user(user_id)
        return user is not None and user.has_permission(permission)

    # -- API tokens --------------------------------------------------------------------------

    async def create_token(
        self, user_id: int, name: str = "", *, expires_in: float | None = None
    ) -> IssuedToken:
        """Issue a token for ``user_id``; ``expires_in`` seconds (``None``: no expiry)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = _now()
        expires = created + timedelta(seconds=expires_in) if expires_in is not None else None
        async with await self._transaction() as connection:
            if await connection.scalar(sa.select(users.c.id).where(users.c.id == user_id)) is None:
                raise AuthError(f"no user with id {user_id}")
            token_id = (
                await connection.execute(
                    api_tokens.insert().values(
                        user_id=user_id,
                        name=name,
                        token_hash=hash_token(token),
                        prefix=token[: len(TOKEN_PREFIX) + 4],
                        created_at=created,
                        expires_at=expires,
                    )
                )
            ).inserted_primary_key[0]
        info = TokenInfo(token_id, user_id, name, token[:8], created, expires, None, None)
        return IssuedToken(token, info)

    async def list_tokens(self, user_id: int | None = None) -> list[TokenInfo]:
        query = sa.select(api_tokens).order_by(api_tokens.c.id)
        if user_id is not None:
            query = query.where(api_tokens.c.user_id == user_id)
        engine = await self._engine()
        async with engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_token_info(row) for row in rows]

    async def get_token(self, token_id: int) -> TokenInfo | None:
        engine = await self._engine()
        async with engine.connect() as connection:
            row = (
                (await connection.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)))
                .mappings()
                .first()
            )
        return _token_info(row) if row is not None else None

    async def revoke_token(self, token_id: int) -> bool:
        """Revoke a token; ``False`` when there is no such (unrevoked) token."""
        async with await self._transaction() as connection:
            result = await connection.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
        self._cache = {
            key: entry for key, entry in self._cache.items() if entry.token_id != token_id
        }
        return bool(result.rowcount)

    async def verify_token(self, token: str) -> User | None:
        """The active user a valid (unexpired, unrevoked) token belongs to, else ``None``.

        Answers, refusals included, are cached for ``auth.token_cache_seconds``: a refused
        digest never turns valid (a new token has a new digest), so caching refusals keeps
        a stream of bad tokens from reaching the database. Concurrent requests with the
        same uncached token share one lookup.
        """
        if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        while True:
            cached = self._cache.get(digest)
            if cached is not None and cached.until > self._clock():
                if cached.user is None or _expired(cached.expires_at):
                    return None
                return cached.user
            pending = self._lookups.get(digest)
            if pending is None:
                break
            await pending.wait()
            if digest not in self._cache:  # the lookup failed: try it ourselves
                break
        done = self._lookups[digest] = anyio.Event()
        try:
            found = await self._lookup(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            until = self._clock() + float(self._config.get("auth.token_cache_seconds"))
            if found is None:
                self._cache[digest] = _Cached(None, None, None, until)
            else:
                self._cache[digest] = _Cached(found[0], found[1], found[2], until)
        finally:
            del self._lookups[digest]
            done.set()
        return found[0] if found else None

    async def _lookup(self, digest: str) -> tuple[User, int, datetime | None] | None:
        engine = await self._engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(
                        api_tokens.c.id.label("token_id"),
                        api_tokens.c.token_hash,
                        api_tokens.c.expires_at,
                        api_tokens.c.revoked_at,
                        api_tokens.c.last_used_at,
                        users,
                    )
                    .join(users, users.c.id == api_tokens.c.user_id)
                    .where(api_tokens.c.token_hash == digest)
                )
            ).first()
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                return None
            if row.revoked_at is not None or _expired(row.expires_at) or not row.is_active:
                return None
            user = await _user_with_roles(connection, row._mapping)
        await self._touch(row.token_id, _aware(row.last_used_at))
        return user, row.token_id, _aware(row.expires_at)

    async def _touch(self, token_id: int, last_used: datetime | None) -> None:
        """Record when a token was last used, at most once a minute. A write of its own,
        after the reads: a read that turns into a write can deadlock on SQLite."""
        now = _now()
        if last_used is not None and now - last_used < timedelta(minutes=1):
            return
        try:
            async with self._database().transaction() as connection:
                await connection.execute(
                    api_tokens.update().where(api_tokens.c.id == token_id).values(last_used_at=now)
                )
        except sa.exc.SQLAlchemyError as exc:  # bookkeeping must not refuse a valid token
            logger.warning("could not record the use of token %d: %s", token_id, exc)

    # -- passwords and login -----------------------------------------------------------------

    async def authenticate(self, username: str, password: str, client: str = "") -> User:
        """The user whose name and password these are; failures are throttled per user name
        and per client address (:class:`LoginThrottled`)."""
        keys = [f"user:{username.lower()}"] + ([f"client:{client}"] if client else [])
        self.throttle.check(*keys)
        engine = await self._engine()
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    sa.select(users.c.id, users.c.password_hash, users.c.is_active).where(
                        sa.func.lower(users.c.username) == username.lower()
                    )
                )
            ).first()
        # An unknown user costs a hash check too, so timing does not tell which names exist.
        stored = row.password_hash if row is not None and row.password_hash else None
        valid = await self._verify(stored or await self._dummy(), password) and stored is not None
        if row is None or not valid or not row.is_active:
            self.throttle.failed(*keys)
            logger.warning("failed login for %r from %s", username, client or "unknown client")
            raise AuthError("invalid username or password")
        self.throttle.succeeded(keys[0])
        user = await self.get_user(row.id)
        assert user is not None
        return user

    async def login(self, username: str, password: str, client: str = "") -> IssuedToken:
        """Authenticate and issue a token that expires after ``auth.login_token_ttl``."""
        user = await self.authenticate(username, password, client)
        ttl = float(self._config.get("auth.login_token_ttl"))
        return await self.create_token(user.id, "login", expires_in=ttl)

    async def bootstrap_admin(self, username: str = "admin") -> IssuedToken | None:
        """On a database without users, create an admin and issue its first token.

        Returns ``None`` (and changes nothing) when any user exists already, so it is safe
        to call on every start.
        """
        engine = await self._engine()
        async with engine.connect() as connection:
            if await connection.scalar(sa.select(sa.func.count()).select_from(users)):
                return None
        user = await self.create_user(
            username=username, full_name="Administrator", roles=[ADMIN_ROLE]
        )
        return await self.create_token(user.id, "bootstrap")

    def _password_hasher(self) -> PasswordHasher:
        if self._hasher is None:
            from argon2 import PasswordHasher

            self._hasher = PasswordHasher()
        return self._hasher

    async def _hash(self, password: str) -> str:
        if len(password) < 8:
            raise AuthError("passwords need at least 8 characters")
        # Argon2 is deliberately slow and memory-hard: keep it off the event loop.
        return await anyio.to_thread.run_sync(self._password_hasher().hash, password)

    async def _verify(self, stored: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        def verify() -> bool:
            try:
                return self._password_hasher().verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False

        return await anyio.to_thread.run_sync(verify)

    async def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(secrets.token_urlsafe(16))
        return self._dummy_hash


async def _load_user(connection: Any, condition: Any) -> User | None:
    row = (await connection.execute(sa.select(users).where(condition))).mappings().first()
    return None if row is None else await _user_with_roles(connection, row)


async def _user_with_roles(connection: Any, row: Mapping[str, Any]) -> User:
    held = (
        await connection.execute(
            sa.select(roles.c.name, roles.c.permissions)
            .join(user_roles, user_roles.c.role == roles.c.name)
            .where(user_roles.c.user_id == row["id"])
            .order_by(roles.c.name)
        )
    ).all()
    return User(
        id=row["id"],
        username=row["username"],
        email=row["email"],
        full_name=row["full_name"],
        roles=tuple(name for name, _ in held),
        permissions=frozenset(p for _, permissions in held for p in permissions),
        is_active=bool(row["is_active"]),
        created_at=_aware(row["created_at"]),
    )


def _token_info(row: Mapping[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        prefix=row["prefix"],
        created_at=_aware(row["created_at"]) or _now(),
        expires_at=_aware(row["expires_at"]),
        revoked_at=_aware(row["revoked_at"]),
        last_used_at=_aware(row["last_used_at"]),
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes for what was stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _expired(expires_at: datetime | None) -> bool:
    return expires_at is not None and _aware(expires_at) <= _now()  # type: ignore[operator]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
