"""``chatterfix users``: manage users and API tokens in the platform's database.

These commands work on the database directly (the one ``database.url``, ``DATABASE_URL``
or the data folder names), so they work with or without a running gateway.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import rich_click as click

if TYPE_CHECKING:
    from chatterfix.services.auth import AuthService

Result = TypeVar("Result")


def with_auth(work: Callable[[AuthService], Awaitable[Result]]) -> Result:
    """Run ``work`` against the configured database's auth service, then close it."""
    import anyio

    from chatterfix.config import Config
    from chatterfix.services.auth import AuthError, AuthService
    from chatterfix.services.database import database_for

    config = Config()

    async def run() -> Result:
        database = database_for(config)
        try:
            return await work(AuthService(lambda: database, config))
        finally:
            await database.aclose()

    try:
        return anyio.run(run)
    except AuthError as exc:
        raise click.ClickException(str(exc)) from None


async def _user_id(auth: AuthService, username: str) -> int:
    from chatterfix.services.auth import AuthError

    user = await auth.get_user_by_name(username)
    if user is None:
        raise AuthError(f"no user named {username!r}")
    return user.id


@click.group()
def users() -> None:
    """Create users, list them, issue and revoke their API tokens."""


@users.command("create")
@click.argument("username")
@click.option("--email", default=None, help="E-mail address.")
@click.option("--full-name", default=None, help="Full name.")
@click.option("--role", "roles", multiple=True, help="Role to give (repeatable), e.g. admin.")
@click.option(
    "--password",
    is_flag=True,
    help="Ask for a password (for POST /platform/auth/login); without it, tokens only.",
)
def create(
    username: str, email: str | None, full_name: str | None, roles: tuple[str, ...], password: bool
) -> None:
    """Create user USERNAME."""
    secret = (
        click.prompt("Password", hide_input=True, confirmation_prompt=True) if password else None
    )
    user = with_auth(
        lambda auth: auth.create_user(
            username=username, email=email, full_name=full_name, roles=roles, password=secret
        )
    )
    click.echo(
        f"created user {user.username} (id {user.id}; roles: {', '.join(user.roles) or '-'})"
    )


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_users(as_json: bool) -> None:
    """List users with their roles."""
    found = with_auth(lambda auth: auth.list_users())
    if as_json:
        click.echo(json.dumps([user.to_dict() for user in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "username", "full name", "roles", "active")
    for user in found:
        table.add_row(
            str(user.id),
            user.username,
            user.full_name or "",
            ", ".join(user.roles),
            "yes" if user.is_active else "no",
        )
    Console().print(table)


@users.command("token")
@click.argument("username")
@click.option("--name", default="cli", show_default=True, help="What the token is for.")
@click.option(
    "--expires-in", type=float, default=None, help="Days until it expires (default: never)."
)
def token(username: str, name: str, expires_in: float | None) -> None:
    """Issue an API token for USERNAME; it is printed this once."""

    async def issue(auth: AuthService) -> Any:
        seconds = expires_in * 86400 if expires_in is not None else None
        return await auth.create_token(await _user_id(auth, username), name, expires_in=seconds)

    issued = with_auth(issue)
    click.echo(issued.token)
    click.echo(
        f"token {issued.info.id} for {username}; store it now, it is not shown again", err=True
    )


@users.command("tokens")
@click.argument("username")
def tokens(username: str) -> None:
    """List USERNAME's tokens (never the tokens themselves)."""

    async def listing(auth: AuthService) -> Any:
        return await auth.list_tokens(await _user_id(auth, username))

    for info in with_auth(listing):
        state = "active" if info.active else ("revoked" if info.revoked_at else "expired")
        click.echo(
            f"{info.id}\t{info.prefix}…\t{info.name}\t{state}\t"
            f"last used {info.to_dict()['last_used_at'] or 'never'}"
        )


@users.command("revoke")
@click.argument("token_id", type=int)
def revoke(token_id: int) -> None:
    """Revoke the token with id TOKEN_ID (see `chatterfix users tokens`)."""
    if not with_auth(lambda auth: auth.revoke_token(token_id)):
        raise click.ClickException(f"no active token with id {token_id}")
    click.echo(f"token {token_id} revoked")
