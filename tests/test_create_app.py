"""Apps from templates: `chatterfix create-app`, `update-app`, `templates`, and the apps
themselves: generated, pip-installed into a fresh virtual environment, tested with their own
test suites, served by a real gateway (installed, and from a plugins folder), run on their
own with registration at a gateway."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from chatterfix import __version__
from chatterfix.cli import cli
from chatterfix.manifest import load_manifest_file
from chatterfix.scaffold import list_templates, templates_root
from tests.helpers import free_port, gateway, stop_process_group, venv_seeing_project

TEMPLATES = ("ai_service", "web_app", "api", "microservice")
# One app per template, and the route that answers 200 once it runs.
APPS = {
    "ai_service": ("asset_analyzer", "/api/asset_analyzer/status"),
    "web_app": ("maintenance_dashboard", "/maintenance_dashboard"),
    "api": ("inspections_api", "/api/inspections_api/items"),
    "microservice": ("order_watcher", "/api/order_watcher/status"),
}
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template store of these tests (never the user's)."""
    return tmp_path_factory.mktemp("template-store") / "templates"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, store: Path) -> None:
    monkeypatch.setenv("CHATTERFIX_TEMPLATES__STORE", str(store))
    monkeypatch.setenv("CHATTERFIX_NO_PLUGIN_COMMANDS", "1")
    monkeypatch.delenv("CHATTERFIX_TEMPLATES__DIR", raising=False)
    monkeypatch.delenv("CHATTERFIX_TOKEN", raising=False)
    monkeypatch.setenv("COLUMNS", "400")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def said(result: Result) -> str:
    """The output as one line, without the frame rich-click draws around errors."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


def create(*args: str) -> Result:
    result = invoke("create-app", *args)
    assert result.exit_code == 0, result.output
    return result


def generate_all(folder: Path) -> dict[str, Path]:
    """One app per template in ``folder``, non-interactively."""
    paths = {}
    for template, (name, _) in APPS.items():
        create("--template", template, "--name", name, "--output-dir", str(folder))
        paths[template] = folder / name
    return paths


# --- templates and the command line ----------------------------------------------------


def test_templates_are_listed_with_descriptions_and_variables() -> None:
    listed = json.loads(invoke("templates", "--json").output)
    assert [item["name"] for item in listed] == list(TEMPLATES)
    assert all(item["description"] for item in listed)
    variables = {item["name"]: {v["name"] for v in item["variables"]} for item in listed}
    assert variables["ai_service"] == {"description", "author", "port", "ai_provider"}
    assert variables["api"] == {"description", "author", "port", "resource"}
    assert variables["web_app"] == {"description", "author", "port", "page_title"}
    assert variables["microservice"] == {"description", "author", "port", "subscribe_to"}
    text = invoke("templates", "api").output
    assert "resource" in text
    assert "[default: items]" in text
    assert "[default: 8300]" in text


def test_the_templates_ship_inside_the_package() -> None:
    # In this checkout the templates come from copier_templates/; a wheel carries the same
    # folder as chatterfix/copier_templates (pyproject.toml force-includes it).
    root = templates_root()
    assert (root / "copier.yml").is_file()
    assert {info.name for info in list_templates(root)} == set(TEMPLATES)
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    force = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force["copier_templates"] == "chatterfix/copier_templates"


def test_the_seed_call_form_works(tmp_path: Path) -> None:
    result = create(
        "--template",
        "ai_service",
        "--name",
        "asset_analyzer",
        "--variables",
        'service_description=AI-powered asset condition "analysis"',
        "--var",
        "ai_provider=anthropic",
        "-v",
        "port=8150",
        "--output-dir",
        str(tmp_path),
    )
    app = tmp_path / "asset_analyzer"
    manifest = load_manifest_file(app / "plugin.json")
    assert manifest.description == 'AI-powered asset condition "analysis"'
    assert manifest.port == 8150
    assert manifest.app_type == "ai_service"
    assert manifest.created_at is not None
    assert manifest.permissions == ["ai.use"]
    assert '"default": "anthropic"' in (app / "src/asset_analyzer/__init__.py").read_text()
    assert "Next steps" in result.output
    assert f"chatterfix start --plugins-dir {tmp_path}" in result.output
    assert "curl http://127.0.0.1:8000/api/asset_analyzer/status" in result.output
    # A git repository with one commit, so that update-app can work.
    log = subprocess.run(
        ["git", "log", "--oneline"], cwd=app, capture_output=True, text=True, check=True
    )
    assert len(log.stdout.splitlines()) == 1
    answers = (app / ".copier-answers.yml").read_text()
    assert f"_commit: {__version__}" in answers
    assert "template: ai_service" in answers


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("my-app", "is not a valid app name"),
        ("1app", "is not a valid app name"),
        ("class", "is a Python keyword"),
        ("platform", "is reserved"),
        ("hello", "an installed plugin is already called 'hello'"),
        ("json", "a Python module called 'json' already exists (the standard library)"),
        ("x" * 41, "too long"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str, message: str
) -> None:
    result = invoke("create-app", "-t", "api", "-n", name, "-o", str(tmp_path / "apps"))
    assert result.exit_code == 1
    assert message in said(result)
    assert not (tmp_path / "apps").exists()


def test_an_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "work_orders").mkdir()
    (tmp_path / "work_orders" / "mine.txt").write_text("keep me")
    result = invoke("create-app", "-t", "api", "-n", "work_orders", "-o", str(tmp_path))
    assert result.exit_code == 1
    assert f"{tmp_path / 'work_orders'} already exists" in said(result)
    assert [p.name for p in (tmp_path / "work_orders").iterdir()] == ["mine.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "chatbot", "-n", "x1"], "unknown template 'chatbot'; the templates are: ai_se"),
        (["-t", "api", "-n", "x1", "--var", "port"], "--variables 'port': expected KEY=VALUE"),
        (["-t", "api", "-n", "x1", "--var", "=1"], "expected KEY=VALUE"),
        (["-t", "api", "-n", "x1", "--var", "colour=red"], "has no variable 'colour'"),
        (["-t", "api", "-n", "x1", "--var", "ai_provider=local"], "has no variable 'ai_provider'"),
        (["-t", "api", "-n", "x1", "--var", "port=abc"], "port must be a whole number"),
        (["-t", "ai_service", "-n", "x1", "--var", "ai_provider=skynet"], "must be one of local"),
        (["-t", "api", "-n", "x1", "--var", "port=70000"], "a TCP port is a number from 1"),
        (["-t", "api", "-n", "x1", "--var", "resource=Bad Name"], "not a valid resource name"),
        (["-t", "api", "-n", "x1", "--var", "app_name=y"], "give the app's name with --name"),
        (["-t", "api", "--defaults"], "--name needed to create an app without questions"),
        (["-n", "x1", "--defaults"], "--template needed"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    output = tmp_path / "apps"
    result = invoke("create-app", *args, "-o", str(output))
    assert result.exit_code == 1, result.output
    assert message in said(result)
    assert not output.exists()


def test_generated_files(tmp_path: Path) -> None:
    apps = generate_all(tmp_path)
    for template, app in apps.items():
        name = app.name
        manifest = load_manifest_file(app / "plugin.json")
        assert manifest.name == name
        assert manifest.app_type == template
        assert manifest.version == "0.1.0"
        assert manifest.created_at is not None
        project = tomllib.loads((app / "pyproject.toml").read_text())
        assert project["project"]["entry-points"]["chatterfix"] == {name: name}
        dependencies = project["project"]["dependencies"]
        assert dependencies[0] == f"chatterfix>={__version__},<0.2"
        assert all(">=" in item and "<" in item for item in dependencies)  # pinned ranges
        for path in ("README.md", ".dockerignore", ".gitignore", "main.py", "tests/conftest.py"):
            assert (app / path).is_file(), path
        assert (app / "src" / name / "__main__.py").is_file()
        check_dockerfile(app)
    web = apps["web_app"] / "src" / "maintenance_dashboard"
    assert (web / "templates" / "index.html").is_file()
    html = (web / "templates" / "index.html").read_text()
    assert "{{ static_url }}/style.css" in html  # Jinja2 of the app, not rendered by copier
    assert "http" not in html  # no CDN
    # The generated code passes the project's own linters.
    for command in (["check"], ["format", "--check"]):
        lint = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def check_dockerfile(app: Path) -> None:
    """The seed's practices: slim base, dependencies in a layer of their own before the code,
    a non-root user, a health check, the port from the environment."""
    steps = dockerfile_instructions(app / "Dockerfile")
    keywords = [keyword for keyword, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    copies = [index for index, (keyword, _) in enumerate(steps) if keyword == "COPY"]
    assert steps[copies[0]][1] == "pyproject.toml ./"
    assert steps[copies[1]][1] == ". ."
    dependency_layer = steps[copies[0] + 1][1]
    assert "pip install --no-cache-dir -r" in dependency_layer
    user = keywords.index("USER")
    assert steps[user][1] not in ("root", "0")
    assert all(keyword != "RUN" for keyword in keywords[user:])
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert "PORT=" in env
    assert "HOST=0.0.0.0" in env
    healthcheck = steps[keywords.index("HEALTHCHECK")][1]
    assert "/health" in healthcheck
    assert "os.environ.get('PORT'" in healthcheck
    assert json.loads(steps[keywords.index("CMD")][1])[:2] == ["python", "-m"]
    # The dependency layer's script reads the dependencies out of pyproject.toml.
    script = re.search(r'python -c "([^"]+)"', dependency_layer)
    assert script is not None
    listed = subprocess.run(
        [sys.executable, "-c", script.group(1)],
        cwd=app,
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout.splitlines()[0].startswith("chatterfix>=")
    ignored = (app / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", ".chatterfix", "tests", "__pycache__"} <= set(ignored)


# --- the interactive wizard, in a real terminal -------------------------------------------


class Terminal:
    """A process on a pseudo-terminal, driven like a user at a keyboard."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # 50 rows of 200 columns, so that no question or message is cut short.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.fd = master
        self.process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in ANSI.sub(b"", self.seen):
            if time.monotonic() > deadline:
                screen = ANSI.sub(b"", self.seen).decode(errors="replace")
                pytest.fail(f"{text!r} did not appear; the terminal shows:\n{screen[-3000:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:  # the process has exited and closed the terminal
                    time.sleep(0.05)

    def send(self, keys: str) -> None:
        self.seen = b""
        os.write(self.fd, keys.encode())

    def close(self, timeout: float = 60) -> int | None:
        """The exit code, once the process has ended; None if it had to be killed."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return None
        finally:
            os.close(self.fd)


ENTER, DOWN, CLEAR_LINE = "\r", "\x1b[B", "\x15"


@pytest.mark.slow
def test_the_wizard_asks_in_the_terminal(tmp_path: Path) -> None:
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160", "PROMPT_TOOLKIT_NO_CPR": "1"}
    terminal = Terminal(
        [sys.executable, "-m", "chatterfix", "create-app", "--output-dir", "apps"],
        cwd=tmp_path,
        env=env,
    )
    try:
        terminal.expect("Which kind of app?")
        terminal.send(DOWN + DOWN + ENTER)  # ai_service, web_app, api
        terminal.expect("App name")
        # The terminal redraws only what changes: one refused name shows its whole message.
        terminal.send("hello" + ENTER)
        terminal.expect("'hello' cannot be used: an installed plugin has that name")
        terminal.send(CLEAR_LINE + "work_orders" + ENTER)
        terminal.expect("One-line description")
        terminal.send(CLEAR_LINE + "Work orders of the plant" + ENTER)
        terminal.expect("Author")
        terminal.send(CLEAR_LINE + "Plant Engineering" + ENTER)
        terminal.expect("Port of the app")
        terminal.send(CLEAR_LINE + "8310" + ENTER)
        terminal.expect("Name of the REST resource")
        terminal.send(CLEAR_LINE + "orders" + ENTER)
        terminal.expect("Created the api app work_orders")
    finally:
        code = terminal.close()
    assert code == 0
    manifest = load_manifest_file(tmp_path / "apps" / "work_orders" / "plugin.json")
    assert (manifest.app_type, manifest.port) == ("api", 8310)
    assert manifest.description == "Work orders of the plant"
    assert manifest.author == "Plant Engineering"
    code = (tmp_path / "apps" / "work_orders" / "src" / "work_orders" / "models.py").read_text()
    assert 'RESOURCE = "orders"' in code


def test_answers_can_come_from_standard_input(tmp_path: Path) -> None:
    # template (the first), name, description, author, port, AI provider (the first)
    answers = "\n".join(["", "stdin_app", "", "", "", ""]) + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "chatterfix", "create-app", "-o", str(tmp_path)],
        input=answers,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert load_manifest_file(tmp_path / "stdin_app" / "plugin.json").app_type == "ai_service"


def test_no_answers_at_all_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatterfix", "create-app", "-o", str(tmp_path / "apps")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "give --template and --name to create an app without questions" in result.stderr
    assert not (tmp_path / "apps").exists()


# --- update-app ------------------------------------------------------------------------------


def git(app: Path, *args: str) -> str:
    identity = ["-c", "user.name=Plant Engineering", "-c", "user.email=plant@example.com"]
    return subprocess.run(
        ["git", *identity, *args], cwd=app, capture_output=True, text=True, check=True
    ).stdout


def answer(app: Path, key: str) -> str:
    for line in (app / ".copier-answers.yml").read_text().splitlines():
        if line.startswith(f"{key}: "):
            return line.split(": ", 1)[1].strip("'")
    raise AssertionError(f"no {key} in the answers of {app}")


@pytest.fixture
def own_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the templates, as templates.dir, to change as a new version would."""
    copy = tmp_path / "templates"
    shutil.copytree(templates_root(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("CHATTERFIX_TEMPLATES__DIR", str(copy))
    return copy


@pytest.mark.slow
def test_update_app_applies_the_template_change_and_keeps_local_edits(
    tmp_path: Path, own_templates: Path
) -> None:
    create("-t", "microservice", "-n", "meter_reader", "-o", str(tmp_path / "apps"))
    app = tmp_path / "apps" / "meter_reader"
    old_tag = answer(app, "_commit")
    assert old_tag == __version__
    result = invoke("update-app", str(app))
    assert "is up to date" in result.output

    # A local edit, committed.
    module = app / "src" / "meter_reader" / "__init__.py"
    edited = module.read_text().replace(
        'URGENT = {"high", "critical", "urgent", "emergency"}',
        'URGENT = {"high", "critical", "urgent", "emergency", "safety"}',
    )
    assert edited != module.read_text()
    module.write_text(edited)
    git(app, "commit", "-qam", "Safety events are urgent")

    # A newer template: a new route and a new line in the README.
    package = own_templates / "microservice" / "src" / "{{ app_name }}"
    template_module = package / "__init__.py.jinja"
    source = template_module.read_text()
    source = source.replace(
        '    return [Route(f"{PREFIX}/status", status, methods=["GET"])]',
        "    async def version(request: Request) -> JSONResponse:\n"
        '        return JSONResponse({"version": PLUGIN_MANIFEST.get("version")})\n\n'
        "    return [\n"
        '        Route(f"{PREFIX}/status", status, methods=["GET"]),\n'
        '        Route(f"{PREFIX}/version", version, methods=["GET"]),\n'
        "    ]",
    )
    assert 'f"{PREFIX}/version"' in source
    template_module.write_text(source)

    result = invoke("update-app", str(app))
    assert result.exit_code == 0, result.output
    new_tag = answer(app, "_commit")
    assert re.fullmatch(rf"{re.escape(old_tag)}\.post\d+", new_tag)
    assert f"from the microservice template {old_tag} to {new_tag}" in result.output
    code = module.read_text()
    assert '"emergency", "safety"}' in code  # the local edit
    assert 'f"{PREFIX}/version"' in code  # the template's change
    assert "<<<<<<<" not in code
    assert load_manifest_file(app / "plugin.json").updated_at is not None
    # The updated app still passes its own tests.
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


@pytest.mark.slow
def test_update_app_marks_conflicts_and_refuses_a_dirty_app(
    tmp_path: Path, own_templates: Path
) -> None:
    create("-t", "api", "-n", "parts", "-o", str(tmp_path))
    app = tmp_path / "parts"
    # The template and the app change the same lines.
    template_models = own_templates / "api" / "src" / "{{ app_name }}" / "models.py.jinja"
    template_models.write_text(
        template_models.read_text().replace("max_length=200", "max_length=300")
    )
    models = app / "src" / "parts" / "models.py"
    models.write_text(models.read_text().replace("max_length=200", "max_length=120"))
    result = invoke("update-app", str(app))
    assert result.exit_code == 1
    assert "has uncommitted changes (src/parts/models.py); commit them first" in said(result)
    git(app, "commit", "-qam", "Shorter names")

    result = invoke("update-app", str(app))
    assert result.exit_code == 0, result.output
    assert "Conflicts" in result.output
    assert "src/parts/models.py" in result.output
    assert "<<<<<<<" in models.read_text()


def test_update_app_needs_an_app(tmp_path: Path) -> None:
    result = invoke("update-app", str(tmp_path))
    assert result.exit_code == 1
    assert "is not an app made by chatterfix create-app" in said(result)


# --- the apps, for real ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment that sees this project and its dependencies through a
    site directory; apps get pip-installed into it."""
    return venv_seeing_project(tmp_path_factory.mktemp("apps-venv"))


@pytest.fixture(scope="module")
def installed_apps(
    tmp_path_factory: pytest.TempPathFactory, venv_python: Path, store: Path
) -> dict[str, Path]:
    """The four apps, generated and pip-installed (not editable) into the fresh venv."""
    folder = tmp_path_factory.mktemp("generated")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHATTERFIX_TEMPLATES__STORE", str(store))
        patch.setenv("CHATTERFIX_NO_PLUGIN_COMMANDS", "1")
        apps = generate_all(folder)
    pip = [str(venv_python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--no-index", *map(str, apps.values())], check=True)
    return apps


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_each_app_passes_its_own_tests_in_the_fresh_venv(
    installed_apps: dict[str, Path], venv_python: Path, template: str
) -> None:
    app = installed_apps[template]
    result = subprocess.run(
        [str(venv_python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


@pytest.mark.slow
def test_installed_apps_answer_through_the_gateway(
    installed_apps: dict[str, Path], venv_python: Path, tmp_path: Path
) -> None:
    with gateway(str(venv_python), cwd=tmp_path) as url:
        for template, (name, route) in APPS.items():
            response = httpx.get(url + route)
            assert response.status_code == 200, (route, response.text)
            record = httpx.get(f"{url}/platform/plugins/{name}").json()
            assert record["origin"] == "entrypoint"
            assert record["app_type"] == template  # plugin.json travelled in the wheel
            assert record["status"] == "running"
        health = httpx.get(url + "/health").json()
        assert all(health["plugins"][name]["status"] == "healthy" for name, _ in APPS.values())
        page = httpx.get(url + "/maintenance_dashboard")
        assert page.headers["content-type"].startswith("text/html")
        assert httpx.get(url + "/maintenance_dashboard/static/style.css").status_code == 200


@pytest.mark.slow
def test_a_plugins_folder_of_generated_apps_is_served_without_installing(
    tmp_path: Path,
) -> None:
    generate_all(tmp_path / "apps")
    with gateway(sys.executable, "--plugins-dir", "apps", cwd=tmp_path) as url:
        for template, (name, route) in APPS.items():
            response = httpx.get(url + route)
            assert response.status_code == 200, (route, response.text)
            record = httpx.get(f"{url}/platform/plugins/{name}").json()
            assert (record["origin"], record["app_type"]) == ("folder", template)
        created = httpx.post(url + "/api/maintenance_dashboard/data", json={"title": "Filter"})
        assert created.status_code == 201
        assert "Filter" in httpx.get(url + "/maintenance_dashboard").text


@pytest.mark.slow
def test_install_option_installs_into_the_running_environment(
    venv_python: Path, tmp_path: Path, store: Path
) -> None:
    env = {**os.environ, "CHATTERFIX_TEMPLATES__STORE": str(store), "COLUMNS": "200"}
    result = subprocess.run(
        [
            *(str(venv_python), "-m", "chatterfix", "create-app"),
            *("-t", "api", "-n", "tool_crib", "--var", "resource=tools", "--install"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install -e tool_crib" in result.stdout
    assert "chatterfix start" in result.stdout
    with gateway(str(venv_python), cwd=tmp_path) as url:
        assert httpx.get(url + "/api/tool_crib/tools").json()["total"] == 0
        record = httpx.get(url + "/platform/plugins/tool_crib").json()
        assert record["origin"] == "entrypoint"


@pytest.mark.slow
def test_create_app_works_from_an_installed_wheel(tmp_path: Path, store: Path) -> None:
    """The templates travel inside the wheel: a non-editable install finds them there."""
    import zipfile

    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(wheels), str(Path(__file__).parents[1])),
        ],
        check=True,
    )
    [wheel] = wheels.glob("chatterfix-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "chatterfix/copier_templates/copier.yml" in names
    for template in TEMPLATES:
        assert f"chatterfix/copier_templates/{template}/plugin.json.jinja" in names
    # A venv with the wheel installed (its dependencies seen from this environment).
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    import site

    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
    Path(purelib, "_chatterfix_project.pth").write_text(lines)
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--target", purelib, str(wheel)], check=True)
    env = {**os.environ, "CHATTERFIX_TEMPLATES__STORE": str(store)}
    where = subprocess.run(
        [str(python), "-c", "import chatterfix.scaffold as s; print(s.templates_root())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(Path(purelib) / "chatterfix" / "copier_templates")
    created = subprocess.run(
        [str(python), "-m", "chatterfix", "create-app", "-t", "web_app", "-n", "from_wheel"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    assert load_manifest_file(tmp_path / "from_wheel" / "plugin.json").app_type == "web_app"


# --- an app on its own ------------------------------------------------------------------------

# A stand-in for a gateway's service registry, serving the contract the apps register
# against: POST /platform/services (register, renew), DELETE /platform/services/{name}.
REGISTRY = """
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

journal = open(sys.argv[2], "a")

def note(entry):
    journal.write(json.dumps(entry) + "\\n")
    journal.flush()

ABSENT = sys.argv[3:] == ["absent"]  # a gateway without service discovery

async def register(request):
    note({"method": "POST", "body": await request.json(),
          "auth": request.headers.get("authorization")})
    if ABSENT:
        return JSONResponse({"error": {"code": "not_found"}}, status_code=404)
    return JSONResponse({"registered": True}, status_code=201)

async def deregister(request):
    note({"method": "DELETE", "name": request.path_params["name"],
          "url": request.query_params.get("url")})
    return JSONResponse({"deregistered": True})

app = Starlette(routes=[
    Route("/platform/services", register, methods=["POST"]),
    Route("/platform/services/{name}", deregister, methods=["DELETE"]),
])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextlib.contextmanager
def process(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[Any]:
    with log.open("wb") as output:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_process_group(proc)


def wait_for(condition: Any, what: str, log: Path, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError, json.JSONDecodeError, OSError):
            value = condition()
            if value:
                return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def journal_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_an_app_runs_on_its_own_and_registers_with_the_gateway(tmp_path: Path) -> None:
    create("-t", "ai_service", "-n", "pump_advisor", "-o", str(tmp_path))
    app = tmp_path / "pump_advisor"
    registry_port, app_port = free_port(), free_port()
    registry_script = tmp_path / "registry.py"
    registry_script.write_text(REGISTRY)
    journal = tmp_path / "registry.jsonl"
    env = {
        **os.environ,
        "PORT": str(app_port),
        "CHATTERFIX_GATEWAY_URL": f"http://127.0.0.1:{registry_port}",
        "CHATTERFIX_TOKEN": "cfx_registration_token",
        "CHATTERFIX_HEARTBEAT": "0.2",
        "CHATTERFIX_DATA_DIR": str(tmp_path / "data"),
    }
    registry_log, app_log = tmp_path / "registry.log", tmp_path / "app.log"
    with (
        process(
            [sys.executable, str(registry_script), str(registry_port), str(journal)],
            tmp_path,
            dict(os.environ),
            registry_log,
        ),
        process([sys.executable, "main.py"], app, env, app_log) as app_process,
    ):
        status = wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{app_port}/api/pump_advisor/status").json(),
            "the app answering",
            app_log,
        )
        assert status["service"] == "pump_advisor"
        posts = wait_for(
            lambda: [e for e in journal_entries(journal) if e["method"] == "POST"][2:],
            "a registration and two renewals",
            app_log,
        )
        body = posts[0]["body"]
        assert body["name"] == "pump_advisor"
        assert body["url"] == f"http://127.0.0.1:{app_port}"
        assert body["health_endpoint"] == "/health"
        assert body["ttl"] == pytest.approx(0.6)
        assert body["metadata"] == {"version": "0.1.0", "app_type": "ai_service"}
        assert posts[0]["auth"] == "Bearer cfx_registration_token"
        os.killpg(app_process.pid, signal.SIGTERM)
        assert app_process.wait(timeout=30) == 0
    deletes = [entry for entry in journal_entries(journal) if entry["method"] == "DELETE"]
    assert deletes == [
        {"method": "DELETE", "name": "pump_advisor", "url": f"http://127.0.0.1:{app_port}"}
    ]
    assert "registered pump_advisor" in app_log.read_text()


@pytest.mark.slow
def test_an_app_on_its_own_keeps_serving_when_the_gateway_has_no_discovery(
    tmp_path: Path,
) -> None:
    create("-t", "microservice", "-n", "alarm_relay", "-o", str(tmp_path))
    registry_port, app_port = free_port(), free_port()
    registry_script = tmp_path / "registry.py"
    registry_script.write_text(REGISTRY)
    journal, app_log = tmp_path / "registry.jsonl", tmp_path / "app.log"
    env = {
        **os.environ,
        "PORT": str(app_port),
        "CHATTERFIX_GATEWAY_URL": f"http://127.0.0.1:{registry_port}",
        "CHATTERFIX_HEARTBEAT": "0.1",
        "CHATTERFIX_DATA_DIR": str(tmp_path / "data"),
    }
    with (
        process(
            [sys.executable, str(registry_script), str(registry_port), str(journal), "absent"],
            tmp_path,
            dict(os.environ),
            tmp_path / "registry.log",
        ),
        process([sys.executable, "main.py"], tmp_path / "alarm_relay", env, app_log),
    ):
        wait_for(lambda: len(journal_entries(journal)) >= 3, "three attempts", app_log)
        response = httpx.get(f"http://127.0.0.1:{app_port}/api/alarm_relay/status")
        assert response.status_code == 200
    log = app_log.read_text()
    assert log.count("has no service discovery") == 1  # said once, not at every attempt
    assert "alarm_relay keeps serving" in log
    assert not [entry for entry in journal_entries(journal) if entry["method"] == "DELETE"]


@pytest.mark.slow
def test_an_app_on_its_own_through_a_real_gateway(tmp_path: Path) -> None:
    """With the administrator's token, an app on its own registers with a real gateway; the
    gateway lists it, routes /api/<name>/ to it, and forgets it when the app stops. A gateway
    without service discovery answers 404 instead, which the app reports and outlives."""
    create("-t", "microservice", "-n", "boiler_watch", "-o", str(tmp_path))
    app_port = free_port()
    app_log = tmp_path / "app.log"
    service_url = f"http://127.0.0.1:{app_port}"
    with gateway(sys.executable, cwd=tmp_path) as url:
        data_dir = Path(os.environ["CHATTERFIX_DATA_DIR"])
        env = {
            **os.environ,
            "PORT": str(app_port),
            "CHATTERFIX_GATEWAY_URL": url,
            "CHATTERFIX_TOKEN": (data_dir / "cli-token").read_text().strip(),
            "CHATTERFIX_HEARTBEAT": "0.2",
            "CHATTERFIX_DATA_DIR": str(tmp_path / "app-data"),
        }
        discovery = httpx.get(url + "/platform/services").status_code == 200
        with process([sys.executable, "main.py"], tmp_path / "boiler_watch", env, app_log) as app:
            wait_for(
                lambda: httpx.get(f"{service_url}/api/boiler_watch/status").status_code == 200,
                "the app answering",
                app_log,
            )
            if discovery:
                listed = wait_for(
                    lambda: (
                        httpx.get(url + "/platform/services").json()["services"].get("boiler_watch")
                    ),
                    "the registration",
                    app_log,
                )
                assert [i["url"] for i in listed["instances"]] == [service_url]
                assert listed["instances"][0]["metadata"]["app_type"] == "microservice"
                proxied = httpx.get(url + "/api/boiler_watch/status")
                assert proxied.status_code == 200, proxied.text
                assert proxied.json()["service"] == "boiler_watch"
            else:
                wait_for(
                    lambda: "has no service discovery" in app_log.read_text(),
                    "the app noticing",
                    app_log,
                )
            os.killpg(app.pid, signal.SIGTERM)
            assert app.wait(timeout=30) == 0
        if discovery:
            services = httpx.get(url + "/platform/services").json()["services"]
            assert "boiler_watch" not in services
            assert "withdrew boiler_watch" in app_log.read_text()
