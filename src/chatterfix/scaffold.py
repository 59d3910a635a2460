"""Apps from templates: what ``chatterfix create-app``, ``update-app`` and ``templates`` do.

The templates ship inside ChatterFix: ``chatterfix/copier_templates`` in a wheel, the
checkout's ``copier_templates/`` in an editable install (or the folder the ``templates.dir``
setting names). They are copier templates, one folder per template, all answering to one
``copier.yml``.

Copier updates an app by rendering the template version the app was made from, taking the
difference to the app as the local edits, rendering the new version and applying the edits
again. So it needs every version of a template, from a git repository with version tags. A
wheel holds just one version; hence the *template store*, a git repository in the user's data
folder (``~/.local/share/chatterfix/templates``, setting ``templates.store``). Each time the
templates are used, the store is brought up to date: templates whose content is new get a
commit tagged with the ChatterFix version that shipped them (``0.1.0``; ``0.1.0.post1``,
``.post2``... when a templates folder changes without a new version). Apps record the store
and their tag in ``.copier-answers.yml``; ``update-app`` finds there the version it came from.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

import chatterfix
from chatterfix.plugin_sources import ENTRY_POINT_GROUP

TEMPLATES_FOLDER = "copier_templates"
ANSWERS_FILE = ".copier-answers.yml"
MAX_NAME_LENGTH = 40
# Paths of the gateway that an app called so (a web app serves /<name>) would collide with.
RESERVED_NAMES = frozenset(
    {"api", "chatterfix", "docs", "health", "metrics", "openapi", "platform", "static"}
)
# Questions the command line answers itself: they are not variables.
INTERNAL_QUESTIONS = ("template", "app_name", "chatterfix_version", "created_at", "updated_at")
# Older spellings of variables, as the original platform's documentation writes them.
VARIABLE_ALIASES = {"service_description": "description", "name": "app_name"}
GIT_IDENTITY = ("-c", "user.name=ChatterFix", "-c", "user.email=chatterfix@localhost")
GIT_QUIET = ("-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "core.autocrlf=false")


class ScaffoldError(Exception):
    """Something create-app or update-app cannot do; the message says what and why."""


# --- where the templates are ------------------------------------------------------------


def _config() -> Any:
    from chatterfix.config import Config

    return Config()


def templates_root(config: Any = None) -> Path:
    """The folder holding ``copier.yml`` and one folder per template."""
    config = config if config is not None else _config()
    explicit = config.get("templates.dir")
    if explicit:
        root = Path(str(explicit)).expanduser()
        if not (root / "copier.yml").is_file():
            raise ScaffoldError(f"templates.dir = {str(explicit)!r}: no copier.yml in {root}")
        return root.resolve()
    import importlib.resources

    candidates = [
        Path(str(importlib.resources.files("chatterfix") / TEMPLATES_FOLDER)),  # a wheel
        Path(chatterfix.__file__).resolve().parents[2] / TEMPLATES_FOLDER,  # a checkout
    ]
    for root in candidates:
        if (root / "copier.yml").is_file():
            return root.resolve()
    raise ScaffoldError(
        "the app templates are missing from this installation of ChatterFix "
        f"(looked in {', '.join(str(path) for path in candidates)})"
    )


def store_path(config: Any = None) -> Path:
    """The template store: ``templates.store``, else ``$XDG_DATA_HOME/chatterfix/templates``."""
    config = config if config is not None else _config()
    explicit = config.get("templates.store")
    if explicit:
        return Path(str(explicit)).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(data_home).expanduser() / "chatterfix" / "templates").resolve()


def portable(path: Path) -> str:
    """``path`` as recorded in an app's answers: ``~/...`` below the home folder, so that
    the app finds the store again on a colleague's machine."""
    try:
        return "~/" + path.relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


# --- the templates and their questions ----------------------------------------------------


@attrs.frozen
class Variable:
    """A question of a template, answered with ``--variables NAME=VALUE``."""

    name: str
    type: str
    help: str
    default: Any
    choices: tuple[str, ...] = ()


@attrs.frozen
class TemplateInfo:
    name: str
    description: str
    variables: tuple[Variable, ...]


def _yaml() -> Any:
    import importlib

    return importlib.import_module("yaml")  # PyYAML, a dependency of copier


def _read_copier_yml(root: Path) -> dict[str, Any]:
    data = _yaml().safe_load((root / "copier.yml").read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ScaffoldError(f"{root / 'copier.yml'} is not a mapping of questions")
    return data


def _render(text: Any, context: Mapping[str, Any]) -> Any:
    if not isinstance(text, str) or "{" not in text:
        return text
    import jinja2

    try:
        return jinja2.Environment().from_string(text).render(**context).strip()
    except jinja2.TemplateError:
        return text


def _applies(spec: Mapping[str, Any], template: str) -> bool:
    when = spec.get("when", True)
    if isinstance(when, bool):
        return when
    return str(_render(when, {"template": template})).strip().lower() not in ("false", "", "0")


def list_templates(root: Path | None = None) -> list[TemplateInfo]:
    """The templates, in the order of ``copier.yml``, with their variables."""
    data = _read_copier_yml(root or templates_root())
    choices = (data.get("template") or {}).get("choices") or {}
    templates = []
    for label, name in choices.items():
        description = str(label).strip()
        if description.startswith(str(name)):
            description = description[len(str(name)) :].strip()
        variables = []
        for key, spec in data.items():
            if key.startswith("_") or key in INTERNAL_QUESTIONS:
                continue
            spec = spec if isinstance(spec, dict) else {"default": spec}
            if not _applies(spec, str(name)):
                continue
            context = {"template": name, "app_name": "<name>"}
            variables.append(
                Variable(
                    name=key,
                    type=str(spec.get("type", "str")),
                    help=str(spec.get("help", "")),
                    default=_render(spec.get("default"), context),
                    choices=tuple(str(choice) for choice in spec.get("choices") or ()),
                )
            )
        templates.append(TemplateInfo(str(name), description, tuple(variables)))
    return templates


def template_info(name: str, root: Path | None = None) -> TemplateInfo:
    templates = list_templates(root)
    for info in templates:
        if info.name == name:
            return info
    known = ", ".join(info.name for info in templates)
    raise ScaffoldError(f"unknown template {name!r}; the templates are: {known}")


def parse_variables(items: Sequence[str], info: TemplateInfo) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, checked against the template's variables."""
    known = {variable.name: variable for variable in info.variables}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ScaffoldError(f"--variables {item!r}: expected KEY=VALUE")
        key = VARIABLE_ALIASES.get(key, key)
        if key == "app_name":
            raise ScaffoldError("give the app's name with --name, not --variables")
        if key in INTERNAL_QUESTIONS:
            raise ScaffoldError(f"--variables {item!r}: {key} is set by chatterfix itself")
        variable = known.get(key)
        if variable is None:
            names = ", ".join(sorted(known))
            raise ScaffoldError(
                f"--variables {item!r}: the {info.name} template has no variable {key!r} "
                f"(its variables: {names})"
            )
        if variable.type == "int":
            try:
                values[key] = int(value)
            except ValueError:
                raise ScaffoldError(f"--variables {item!r}: {key} must be a whole number") from None
            continue
        if variable.choices and value not in variable.choices:
            raise ScaffoldError(
                f"--variables {item!r}: {key} must be one of {', '.join(variable.choices)}"
            )
        values[key] = value
    return values


# --- names ------------------------------------------------------------------------------


def installed_plugins() -> dict[str, str]:
    """Plugin name -> the distribution that installs it (the ``chatterfix`` entry points)."""
    found = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        found[entry_point.name] = f"{dist.name} {dist.version}" if dist else entry_point.value
    return found


def _distribution_name(name: str) -> str:
    return name.replace("_", "-").lower()


def name_problem(name: str, output_dir: Path) -> str | None:
    """Why ``name`` cannot name a new app in ``output_dir``, or None when it can."""
    if not name:
        return "an app name is required"
    if not name.isidentifier() or not name.isascii():
        return (
            f"{name!r} is not a valid app name: use letters, digits and underscores, "
            "not starting with a digit (e.g. asset_analyzer)"
        )
    if len(name) > MAX_NAME_LENGTH:
        return f"{name!r} is too long: {MAX_NAME_LENGTH} characters at most"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return f"{name!r} is a Python keyword and cannot name a package"
    if name.lower() in RESERVED_NAMES:
        return f"{name!r} is reserved: the gateway serves /{name.lower()} itself"
    target = output_dir / name
    if target.exists() or target.is_symlink():
        return f"{target} already exists"
    plugins = installed_plugins()
    if name in plugins:
        return f"an installed plugin is already called {name!r} ({plugins[name]})"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution(_distribution_name(name))
        return (
            f"a distribution called {dist.metadata['Name']} is already installed; "
            f"the app's would be {_distribution_name(name)}"
        )
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin is not None:  # namespace folders do not count
        where = "the standard library" if name in sys.stdlib_module_names else spec.origin
        return f"a Python module called {name!r} already exists ({where})"
    return None


def unavailable_names(output_dir: Path) -> dict[str, str]:
    """Names the wizard refuses, each with its reason (for the template's name validator)."""
    import pkgutil

    names: dict[str, str] = {}
    for found in pkgutil.iter_modules():
        names[found.name] = "a Python module of that name is already installed"
    for module in sys.stdlib_module_names:
        names[module] = "a module of the standard library has that name"
    for dist in importlib.metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower().replace("-", "_").replace(".", "_")
        if dist_name:
            names[dist_name] = f"a distribution called {dist.metadata['Name']} is installed"
    for plugin, source in installed_plugins().items():
        names[plugin] = f"an installed plugin has that name ({source})"
    for reserved in RESERVED_NAMES:
        names[reserved] = f"the gateway serves /{reserved} itself"
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            names[child.name] = f"{child} already exists"
    return names


# --- git ----------------------------------------------------------------------------------


def have_git() -> bool:
    return shutil.which("git") is not None


def git(*args: str, cwd: Path, check: bool = True, strip: bool = True) -> str:
    """Run git; its output (stripped). A failure raises ScaffoldError with git's message."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    process = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )
    if check and process.returncode != 0:
        message = (process.stderr or process.stdout).strip()
        raise ScaffoldError(f"git {' '.join(args)} failed in {cwd}: {message}")
    return process.stdout.strip() if strip else process.stdout


def inside_work_tree(path: Path) -> bool:
    return git("rev-parse", "--is-inside-work-tree", cwd=path, check=False) == "true"


def _identity(cwd: Path) -> tuple[str, ...]:
    """A commit identity when git has none configured (fresh machines, containers)."""
    if git("config", "user.email", cwd=cwd, check=False):
        return ()
    return GIT_IDENTITY


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock held across processes (two create-app at once share the store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on this platform
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the template store -------------------------------------------------------------------


def _copy_templates(root: Path, store: Path) -> None:
    for child in store.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.py[co]", ".DS_Store", ".git")
    shutil.copytree(root, store, dirs_exist_ok=True, ignore=ignore)


def _next_tag(version: str, tags: Sequence[str]) -> str:
    if version not in tags:
        return version
    number = 1
    while f"{version}.post{number}" in tags:
        number += 1
    return f"{version}.post{number}"


def sync_store(root: Path, store: Path, version: str = chatterfix.__version__) -> str:
    """Put the templates of ``root`` into the store; the tag of that content (made if new)."""
    if not have_git():
        raise ScaffoldError("git is needed to version the templates (install git)")
    with _locked(store.with_name(store.name + ".lock")):
        store.mkdir(parents=True, exist_ok=True)
        if not (store / ".git").is_dir():
            git("init", "-q", "--initial-branch=main", cwd=store)
        _copy_templates(root, store)
        git("add", "-A", cwd=store)
        tree = git("write-tree", cwd=store)
        tags = git("tag", "--list", cwd=store).split()
        if tags:
            trees = git("rev-parse", *(f"{tag}^{{tree}}" for tag in tags), cwd=store).split()
            matching = [tag for tag, tag_tree in zip(tags, trees, strict=True) if tag_tree == tree]
            if version in matching:
                return version
            if matching:
                return matching[0]
        head_tree = git("rev-parse", "-q", "--verify", "HEAD^{tree}", cwd=store, check=False)
        if head_tree != tree:
            git(
                *GIT_IDENTITY,
                *GIT_QUIET,
                "commit",
                "-q",
                "-m",
                f"App templates of ChatterFix {version}",
                cwd=store,
            )
        tag = _next_tag(version, tags)
        git(*GIT_QUIET, "tag", tag, cwd=store)
        return tag


def _has_ref(store: Path, ref: str) -> bool:
    return bool(git("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", cwd=store, check=False))


# --- create-app ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Created:
    path: Path
    name: str
    template: str
    version: str
    answers: dict[str, Any]
    git_initialized: bool
    in_work_tree: bool


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _default_author() -> str:
    if not have_git():
        return ""
    return git("config", "user.name", cwd=Path.cwd(), check=False)


def _read_answers(path: Path) -> dict[str, Any]:
    file = path / ANSWERS_FILE
    if not file.is_file():
        raise ScaffoldError(
            f"{path} is not an app made by chatterfix create-app (no {ANSWERS_FILE})"
        )
    data = _yaml().safe_load(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ScaffoldError(f"{file} does not hold answers")
    return data


def _copier_error(exc: BaseException) -> ScaffoldError:
    text = str(exc).strip() or type(exc).__name__
    return ScaffoldError(text[:1].lower() + text[1:])


def create_app(
    *,
    template: str | None,
    name: str | None,
    variables: Sequence[str] = (),
    output_dir: Path = Path("."),
    ask: bool = False,
    init_git: bool = True,
    config: Any = None,
) -> Created:
    """Generate an app into ``output_dir/<name>``. With ``ask``, copier asks (in the
    terminal) every question not answered here. Nothing is left behind when it fails."""
    config = config if config is not None else _config()
    root = templates_root(config)
    output_dir = output_dir.expanduser()
    data: dict[str, Any] = {}
    if template is not None:
        info = template_info(template, root)
        data["template"] = template
        data.update(parse_variables(variables, info))
    elif variables:
        raise ScaffoldError("--variables needs --template (variables differ per template)")
    if name is not None:
        problem = name_problem(name, output_dir)
        if problem:
            raise ScaffoldError(problem)
        data["app_name"] = name
    if not ask and (template is None or name is None):
        missing = " and ".join(
            option
            for option, value in (("--template", template), ("--name", name))
            if value is None
        )
        raise ScaffoldError(f"{missing} needed to create an app without questions")
    data.update(
        chatterfix_version=chatterfix.__version__,
        created_at=_now(),
        updated_at="",
        default_author=_default_author(),
    )
    if ask:
        data["unavailable_names"] = unavailable_names(output_dir)

    store = store_path(config)
    tag = sync_store(root, store)
    made_output_dir = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="chatterfix-new-app-"))
    created = False
    try:
        from copier import run_copy
        from copier.errors import CopierError, InteractiveSessionError

        try:
            run_copy(
                portable(store),
                staging / "app",
                data=data,
                vcs_ref=tag,
                defaults=not ask,
                quiet=True,
                unsafe=False,
            )
        except InteractiveSessionError:
            raise ScaffoldError(
                "no answers on standard input: give --template and --name to create an app "
                "without questions"
            ) from None
        except (CopierError, ValueError) as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _copier_error(exc) from None
        answers = _read_answers(staging / "app")
        app_name = str(answers["app_name"])
        problem = name_problem(app_name, output_dir)
        if problem:
            raise ScaffoldError(problem)
        target = output_dir / app_name
        shutil.move(staging / "app", target)
        created = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not created and made_output_dir:
            with contextlib.suppress(OSError):
                output_dir.rmdir()  # only when still empty

    in_work_tree = have_git() and inside_work_tree(target)
    initialized = False
    if init_git and have_git() and not in_work_tree:
        git("init", "-q", "--initial-branch=main", cwd=target)
        git("add", "-A", cwd=target)
        git(
            *_identity(target),
            *GIT_QUIET,
            "commit",
            "-q",
            "-m",
            f"Create {app_name} from the ChatterFix {answers['template']} template {tag}",
            cwd=target,
        )
        initialized = True
    return Created(
        path=target,
        name=app_name,
        template=str(answers["template"]),
        version=tag,
        answers=answers,
        git_initialized=initialized,
        in_work_tree=in_work_tree,
    )


def pip_install(path: Path, *, editable: bool = True) -> subprocess.CompletedProcess[str]:
    """``pip install -e path`` into this interpreter's environment. Without build isolation
    when hatchling is already installed here: faster, and no download."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if importlib.util.find_spec("hatchling") is not None:
        command.append("--no-build-isolation")
    command += ["-e", str(path)] if editable else [str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


# --- update-app ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Updated:
    path: Path
    name: str
    template: str
    old_version: str
    new_version: str
    changed: tuple[str, ...]
    conflicts: tuple[str, ...]

    @property
    def up_to_date(self) -> bool:
        return self.old_version == self.new_version and not self.changed


CONFLICT_MARKER = re.compile(r"^<<<<<<< ", re.MULTILINE)


def _changed_files(path: Path) -> list[str]:
    lines = git("status", "--porcelain", "--untracked-files=all", "--", ".", cwd=path, strip=False)
    return [line[3:].strip('"') for line in lines.splitlines() if line.strip()]


def _conflicts(path: Path, changed: Sequence[str]) -> list[str]:
    top = Path(git("rev-parse", "--show-toplevel", cwd=path))
    found = []
    for name in changed:
        file = top / name
        if name.endswith(".rej"):
            found.append(name)
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if file.is_file() and CONFLICT_MARKER.search(file.read_text(encoding="utf-8")):
                found.append(name)
    return found


def update_app(
    path: Path,
    *,
    variables: Sequence[str] = (),
    ask: bool = False,
    conflict: str = "inline",
    config: Any = None,
) -> Updated:
    """Bring the app at ``path`` to the installed template version, keeping its edits."""
    config = config if config is not None else _config()
    path = path.expanduser().resolve()
    answers = _read_answers(path)
    template = str(answers.get("template", ""))
    source = str(answers.get("_src_path", ""))
    old = str(answers.get("_commit", ""))
    if not source or not old:
        raise ScaffoldError(
            f"{path / ANSWERS_FILE} does not say which template version the app came from"
        )
    if not have_git():
        raise ScaffoldError("update-app needs git (install git)")
    if not inside_work_tree(path):
        raise ScaffoldError(
            f"{path} is not in a git repository: update-app merges the template's changes "
            "with yours through git (git init && git add -A && git commit -m 'my app')"
        )
    values = parse_variables(variables, template_info(template, templates_root(config)))
    store = store_path(config)
    ours = Path(source).expanduser().resolve() == store
    tag: str | None = None
    if ours:
        tag = sync_store(templates_root(config), store)
        if not _has_ref(store, old):
            raise ScaffoldError(
                f"the template version {old} this app came from is not in the template store "
                f"{store} (was the app made on another machine, or the store removed?). "
                f"Run `chatterfix create-app` once with ChatterFix {old.split('-')[0]} "
                "installed to record it, then update"
            )
        if tag == old and not values:
            return Updated(
                path=path,
                name=str(answers.get("app_name", path.name)),
                template=template,
                old_version=old,
                new_version=tag,
                changed=(),
                conflicts=(),
            )
    dirty = _changed_files(path)
    if dirty:
        shown = ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
        raise ScaffoldError(
            f"{path} has uncommitted changes ({shown}); commit them first, so that update-app "
            "can keep them apart from the template's"
        )
    data: dict[str, Any] = {
        **values,
        "chatterfix_version": chatterfix.__version__,
        "updated_at": _now(),
    }
    from copier import run_update
    from copier.errors import CopierError

    try:
        run_update(
            path,
            data=data,
            vcs_ref=tag,
            defaults=not ask,
            overwrite=True,
            skip_answered=True,
            conflict="rej" if conflict == "rej" else "inline",
            quiet=True,
            unsafe=False,
        )
    except (CopierError, ValueError) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _copier_error(exc) from None
    new_answers = _read_answers(path)
    changed = _changed_files(path)
    return Updated(
        path=path,
        name=str(new_answers.get("app_name", path.name)),
        template=template,
        old_version=old,
        new_version=str(new_answers.get("_commit", tag or "")),
        changed=tuple(changed),
        conflicts=tuple(_conflicts(path, changed)),
    )
