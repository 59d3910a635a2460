"""``chatterfix create-app``, ``update-app`` and ``templates``: apps from the copier templates.

Light at import (click only), like every command module: copier, yaml and jinja load when a
command runs (see :mod:`chatterfix.scaffold`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import rich_click as click

variables_option = click.option(
    "--variables",
    "--var",
    "-v",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Answer a template question (repeatable): --variables port=8150. "
    "`chatterfix templates NAME` lists a template's variables.",
)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when below it."""
    try:
        relative = path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else "."


def _route_of(created: Any) -> str:
    name, answers = created.name, created.answers
    if created.template == "web_app":
        return f"/{name}"
    if created.template == "api":
        return f"/api/{name}/{answers.get('resource', 'items')}"
    return f"/api/{name}/status"


def _next_steps(created: Any, installed: bool) -> None:
    app = _shown(created.path)
    folder = _shown(created.path.parent)
    route = _route_of(created)
    port = created.answers.get("port")
    click.echo(
        f"Created the {created.template} app {created.name} in {app} "
        f"(template version {created.version})."
    )
    if created.git_initialized:
        click.echo("It is a git repository with one commit: `chatterfix update-app` needs that.")
    elif created.in_work_tree:
        click.echo("Commit it to your repository before running `chatterfix update-app` on it.")
    click.echo("\nNext steps:")
    steps: list[tuple[str, str]] = []
    if installed:
        steps.append(("serve it (installed: every gateway start finds it)", "chatterfix start"))
    else:
        serve = f"chatterfix start --plugins-dir {shlex.quote(folder)}"
        steps.append(("serve it from its folder, without installing", serve))
        install = f"pip install -e {shlex.quote(app)}"
        steps.append(("or install it, then just `chatterfix start`", install))
    steps.append(("call it", f"curl http://127.0.0.1:8000{route}"))
    steps.append(("run its tests", f"cd {shlex.quote(app)} && pytest"))
    own = f"cd {shlex.quote(app)} && python main.py"
    steps.append((f"run it as its own service (port {port})", own))
    width = max(len(label) for label, _ in steps)
    for label, command in steps:
        click.echo(f"  {label.ljust(width)}  {command}")


@click.command("create-app")
@click.option("--template", "-t", default=None, help="ai_service, web_app, api or microservice.")
@click.option("--name", "-n", default=None, help="The app's name, a Python identifier.")
@variables_option
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to create the app in (as <output-dir>/<name>); a plugins folder suits.",
)
@click.option(
    "--defaults",
    is_flag=True,
    help="Ask nothing: questions not answered on the command line take their defaults.",
)
@click.option(
    "--install", is_flag=True, help="pip install the new app (editable) into this environment."
)
@click.option("--no-git", is_flag=True, help="Do not make the new app a git repository.")
def create_app(
    template: str | None,
    name: str | None,
    variables: tuple[str, ...],
    output_dir: Path,
    defaults: bool,
    install: bool,
    no_git: bool,
) -> None:
    """Create an app from a template (chatterfix templates lists them).

    The app is a plugin package with routes, health check, settings, tests, Dockerfile and
    README. With [cyan]--template[/] and [cyan]--name[/] nothing is asked (other questions take
    their defaults, or [cyan]--variables[/]); otherwise a wizard asks in the terminal.

    [cyan]chatterfix create-app -t ai_service -n asset_analyzer -o apps --var port=8150[/]
    """
    from chatterfix.scaffold import ScaffoldError, create_app, pip_install

    ask = not defaults and (template is None or name is None)
    try:
        created = create_app(
            template=template,
            name=name,
            variables=variables,
            output_dir=output_dir,
            ask=ask,
            init_git=not no_git,
        )
    except ScaffoldError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        click.echo("\nCancelled: nothing was created.", err=True)
        sys.exit(130)
    if install:
        click.echo(f"Installing {created.name} (pip install -e {_shown(created.path)}) ...")
        result = pip_install(created.path)
        if result.returncode != 0:
            click.echo(result.stdout + result.stderr, err=True)
            raise click.ClickException(
                f"pip install failed; the app is in {_shown(created.path)}, install it with "
                f"`pip install -e {_shown(created.path)}` once the problem is solved"
            )
    _next_steps(created, installed=install)


@click.command("update-app")
@click.argument(
    "path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path(".")
)
@variables_option
@click.option(
    "--ask",
    is_flag=True,
    help="Ask the questions the app has no answer for yet (default: take their defaults).",
)
@click.option(
    "--conflict",
    type=click.Choice(["inline", "rej"]),
    default="inline",
    show_default=True,
    help="Where both you and the template changed the same lines: markers in the file, "
    "or the template's change in a .rej file beside it.",
)
def update_app(path: Path, variables: tuple[str, ...], ask: bool, conflict: str) -> None:
    """Update an app to the installed ChatterFix's template, keeping your changes.

    PATH is the app's folder (default: here). Commit your changes first: the update merges
    the template's changes with yours through git. [cyan]--variables[/] changes answers
    given at creation (e.g. port=8200).
    """
    from chatterfix.scaffold import ScaffoldError, update_app

    try:
        updated = update_app(path, variables=variables, ask=ask, conflict=conflict)
    except ScaffoldError as exc:
        raise _fail(exc) from None
    if updated.up_to_date:
        click.echo(
            f"{updated.name} is up to date with the {updated.template} template "
            f"(version {updated.new_version})."
        )
        return
    click.echo(
        f"Updated {updated.name} from the {updated.template} template {updated.old_version} "
        f"to {updated.new_version}."
    )
    if updated.changed:
        click.echo("Changed: " + ", ".join(updated.changed))
    if updated.conflicts:
        click.echo(
            "Conflicts (both you and the template changed these lines; resolve them): "
            + ", ".join(updated.conflicts)
        )
    click.echo("Review with `git diff`, run the tests, then commit.")


@click.command("templates")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def templates(name: str | None, as_json: bool) -> None:
    """List the app templates; with NAME, that template's variables.

    The variables are what [cyan]chatterfix create-app --variables KEY=VALUE[/] answers.
    """
    import json

    from chatterfix.scaffold import ScaffoldError, list_templates, template_info

    try:
        found = [template_info(name)] if name else list_templates()
    except ScaffoldError as exc:
        raise _fail(exc) from None
    if as_json:
        data = [
            {
                "name": info.name,
                "description": info.description,
                "variables": [
                    {
                        "name": variable.name,
                        "type": variable.type,
                        "help": variable.help,
                        "default": variable.default,
                        "choices": list(variable.choices),
                    }
                    for variable in info.variables
                ],
            }
            for info in found
        ]
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(info.name) for info in found)
    for info in found:
        click.echo(f"{info.name.ljust(width)}  {info.description}")
        if name:
            click.echo("\nVariables (--variables KEY=VALUE):")
            for variable in info.variables:
                shown = variable.default
                default = "" if shown in (None, "") else f" [default: {shown}]"
                choices = f" ({', '.join(variable.choices)})" if variable.choices else ""
                click.echo(f"  {variable.name}: {variable.help}{choices}{default}")
    if not name:
        click.echo("\nchatterfix templates NAME shows a template's variables.")
