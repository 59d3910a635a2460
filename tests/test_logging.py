"""Structured logging: context on every record, JSON lines and console output, levels from
configuration, the gateway's access log, and `chatterfix start` writing JSON to stderr."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatterfix import Platform, hookimpl
from chatterfix.config import Config, ConfigError
from chatterfix.events.model import Event
from chatterfix.services.logging import ContextFilter, configure_logging
from tests.helpers import gateway, gateway_log

pytestmark = pytest.mark.anyio


class Shop:
    """Logs inside its route, emits an event there, and fails on request."""

    PLUGIN_MANIFEST = {"name": "shop"}

    @hookimpl
    def register_routes(self, platform: Platform) -> list[Any]:
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        log = platform.get_logger("shop")

        async def buy(request: Request) -> JSONResponse:
            log.debug("looking up item")
            log.info("bought", extra={"item": 7, "price": 12.5})
            await platform.events.emit("shop.bought", {"item": 7})
            return JSONResponse({"ok": True})

        async def broken(request: Request) -> JSONResponse:
            try:
                raise ValueError("no such shelf")
            except ValueError:
                log.exception("shelf lookup failed")
            raise RuntimeError("till jammed")

        return [Route("/api/shop/buy", buy), Route("/api/shop/broken", broken)]


class Audit:
    """Handles the shop's events: its records must name it, not the shop."""

    PLUGIN_MANIFEST = {"name": "audit"}

    def __init__(self) -> None:
        self.handled: list[Event] = []

    @hookimpl
    def register_event_handlers(self, platform: Platform) -> list[Any]:
        log = platform.get_logger("audit")

        def on_bought(event: Event) -> None:
            self.handled.append(event)
            log.warning("audited %s", event.type)

        return [("shop.bought", on_bought)]


def make_platform(**config: Any) -> Platform:
    return Platform(
        config=config, plugins=[Shop(), Audit()], load_entrypoints=False, builtins=False
    )


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the process's logging as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ["chatterfix.gateway.access", "chatterfix.shop", "chatterfix.audit", "shop"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def json_records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def by_logger(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [record for record in records if record["logger"] == name]


async def test_records_in_a_plugin_route_carry_the_request_id_and_the_plugin(
    serve: Any,
) -> None:
    platform = make_platform()
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        response = await client.get("/api/shop/buy")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]

    records = json_records(stream)
    [bought] = by_logger(records, "chatterfix.shop")
    assert bought["message"] == "bought"
    assert bought["level"] == "INFO"
    assert bought["request_id"] == request_id
    assert bought["correlation_id"] == request_id
    assert bought["plugin"] == "shop"
    assert (bought["item"], bought["price"]) == (7, 12.5)
    assert bought["ts"].endswith("Z") and "T" in bought["ts"]
    # Nothing about a request is on records from outside one.
    [started] = [r for r in records if r["message"].startswith("platform started")]
    assert (started["request_id"], started["plugin"]) == (None, None)


async def test_event_handler_records_carry_the_correlation_id_and_their_own_plugin(
    serve: Any,
) -> None:
    platform = make_platform()
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        response = await client.get("/api/shop/buy")
        await platform.events.emit("shop.bought", {"item": 8}, correlation_id="order-8")
    request_id = response.headers["x-request-id"]

    in_request, outside = by_logger(json_records(stream), "chatterfix.audit")
    assert in_request["plugin"] == "audit"
    assert in_request["request_id"] == request_id
    assert in_request["correlation_id"] == request_id
    assert outside["plugin"] == "audit"
    assert outside["request_id"] is None
    assert outside["correlation_id"] == "order-8"


async def test_the_access_log_has_method_path_status_duration_and_client(serve: Any) -> None:
    platform = make_platform()
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        bought = await client.get("/api/shop/buy", headers={"X-Request-ID": "trace-1"})
        missing = await client.post("/nowhere")
    assert bought.headers["x-request-id"] == "trace-1"

    first, second = by_logger(json_records(stream), "chatterfix.gateway.access")
    assert first["method"] == "GET"
    assert first["path"] == "/api/shop/buy"
    assert first["status"] == 200
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert first["client"] == "127.0.0.1:123"  # httpx's ASGI transport
    assert first["request_id"] == "trace-1"
    assert first["plugin"] == "shop"
    assert first["message"].startswith("GET /api/shop/buy 200 ")
    assert (second["method"], second["path"], second["status"]) == ("POST", "/nowhere", 404)
    assert second["request_id"] == missing.headers["x-request-id"]
    assert second["plugin"] is None


async def test_the_access_log_can_be_turned_off(serve: Any) -> None:
    platform = make_platform(gateway={"access_log": False})
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        response = await client.get("/api/shop/buy")
    assert response.status_code == 200
    records = json_records(stream)
    assert by_logger(records, "chatterfix.shop")  # the plugin's own records still come
    assert by_logger(records, "chatterfix.gateway.access") == []


async def test_errors_carry_the_exception_text_and_the_request_id(serve: Any) -> None:
    platform = make_platform()
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        response = await client.get("/api/shop/broken")
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]

    records = json_records(stream)
    [logged] = [r for r in records if r["message"] == "shelf lookup failed"]
    assert logged["level"] == "ERROR"
    assert "ValueError: no such shelf" in logged["exception"]
    assert logged["exception"].startswith("Traceback")
    assert logged["request_id"] == request_id
    unhandled = [r for r in records if "RuntimeError: till jammed" in r.get("exception", "")]
    assert unhandled and all(r["request_id"] == request_id for r in unhandled)
    [access] = by_logger(records, "chatterfix.gateway.access")
    assert access["status"] == 500


@pytest.mark.parametrize(
    "levels",
    [
        {"chatterfix.gateway.access": "WARNING", "chatterfix.shop": "debug"},
        # TOML reads an unquoted dotted key as nested tables: the same loggers.
        {"chatterfix": {"gateway": {"access": "WARNING"}, "shop": "DEBUG"}},
    ],
)
async def test_levels_per_logger_come_from_configuration(
    serve: Any, levels: dict[str, Any]
) -> None:
    platform = make_platform(logging={"level": "WARNING", "levels": levels})
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with serve(platform) as client:
        await client.get("/api/shop/buy")
    records = json_records(stream)
    assert [r["message"] for r in by_logger(records, "chatterfix.shop")] == [
        "looking up item",
        "bought",
    ]
    assert [r["message"] for r in by_logger(records, "chatterfix.audit")] == ["audited shop.bought"]
    assert by_logger(records, "chatterfix.gateway.access") == []
    assert by_logger(records, "chatterfix.platform") == []  # INFO, below the root's WARNING


def test_levels_set_by_an_earlier_call_are_undone_by_the_next() -> None:
    stream = io.StringIO()
    configure_logging({"logging": {"levels": {"shop": "ERROR"}}}, stream=stream)
    assert logging.getLogger("shop").level == logging.ERROR
    configure_logging({"logging": {"levels": {}}}, stream=stream)
    assert logging.getLogger("shop").level == logging.NOTSET


def test_configuring_twice_installs_one_handler() -> None:
    stream = io.StringIO()
    first = configure_logging(Config(), stream=stream, force_json=True)
    second = configure_logging(Config(), stream=stream, force_json=True)
    root = logging.getLogger()
    assert first is not second
    assert [h for h in root.handlers if any(isinstance(f, ContextFilter) for f in h.filters)] == [
        second
    ]
    logging.getLogger("chatterfix.twice").warning("once")
    assert [r["message"] for r in json_records(stream)] == ["once"]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"level": "LOUD"}, "logging.level"),
        ({"level": True}, "logging.level"),
        ({"levels": {"my_plugin": "verbose"}}, "logging.levels['my_plugin']"),
        ({"levels": "DEBUG"}, "logging.levels"),
        ({"format": "xml"}, "logging.format"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_key(
    settings: dict[str, Any], key: str
) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(ConfigError) as raised:
        configure_logging({"logging": settings}, stream=io.StringIO())
    assert str(raised.value).startswith(key + " = ")
    assert root.handlers == before  # nothing changed


def test_an_invalid_level_from_the_environment_names_the_key_and_the_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATTERFIX_LOGGING__LEVEL", "chatty")
    with pytest.raises(ConfigError, match=r"^logging\.level = 'chatty'.* env"):
        configure_logging(Config(), stream=io.StringIO())


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_console_output_on_a_terminal_is_coloured_and_readable(serve: Any) -> None:
    platform = make_platform()
    terminal = FakeTerminal()
    configure_logging(platform.config, stream=terminal)  # format "auto"
    async with serve(platform) as client:
        response = await client.get("/api/shop/buy")
    request_id = response.headers["x-request-id"]
    text = terminal.getvalue()
    assert "\x1b[" in text  # ANSI colour codes
    [line] = [line for line in text.splitlines() if "chatterfix.shop" in line]
    assert "INFO" in line
    assert "chatterfix.shop" in line
    assert f"plugin=shop request_id={request_id}" in line
    assert "item=7" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    [access] = [line for line in text.splitlines() if "chatterfix.gateway.access" in line]
    assert "GET /api/shop/buy 200 " in access


def test_console_format_without_a_terminal_has_no_colour() -> None:
    stream = io.StringIO()
    configure_logging({"logging": {"format": "console"}}, stream=stream)
    logging.getLogger("chatterfix.plain").warning("careful", extra={"part": "pump"})
    [line] = stream.getvalue().splitlines()
    assert "\x1b[" not in line
    assert line.split(" ", 1)[1] == "WARNING  chatterfix.plain careful  part=pump"


def test_console_context_follows_the_first_line_of_a_multi_line_message() -> None:
    stream = io.StringIO()
    configure_logging({"logging": {"format": "console"}}, stream=stream)
    logging.getLogger("chatterfix.plain").error("failed:\n    details", extra={"part": "pump"})
    first, second = stream.getvalue().splitlines()
    assert first.endswith("chatterfix.plain failed:  part=pump")
    assert second == "    details"


def test_auto_format_writes_json_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging({"logging": {"format": "auto"}}, stream=stream)
    logging.getLogger("chatterfix.auto").info("hello")
    [record] = json_records(stream)
    assert record["message"] == "hello"
    assert record["logger"] == "chatterfix.auto"


def test_values_json_cannot_hold_are_written_as_text() -> None:
    stream = io.StringIO()
    configure_logging(Config(), stream=stream, force_json=True)
    logging.getLogger("chatterfix.odd").info(
        "odd", extra={"path": Path("/srv/data"), "when": {(1, 2): "tuple key"}}
    )
    [record] = json_records(stream)
    assert record["path"] == "/srv/data"
    assert "tuple key" in record["when"]


async def test_plugin_loggers_name_their_plugin_outside_plugin_code() -> None:
    seen: dict[str, logging.Logger] = {}

    class Worker:
        PLUGIN_MANIFEST = {"name": "worker"}

        @hookimpl
        def startup(self, platform: Platform) -> None:
            seen["worker"] = platform.get_logger("worker.jobs")
            seen["platform"] = platform.get_logger("platform")  # the platform's own

    platform = Platform(plugins=[Worker()], load_entrypoints=False, builtins=False)
    stream = io.StringIO()
    configure_logging(platform.config, stream=stream, force_json=True)
    async with platform:
        # A thread of the plugin's own runs without the plugin's context.
        thread = threading.Thread(target=seen["worker"].info, args=("from a thread",))
        thread.start()
        thread.join()
        seen["worker"].getChild("batch").info("child logger")
        logging.getLogger("chatterfix.plugins.inventory").info("by name")
        seen["platform"].info("platform record")
    records = {r["message"]: r for r in json_records(stream)}
    assert records["from a thread"]["plugin"] == "worker"
    assert records["child logger"]["plugin"] == "worker"
    assert records["by name"]["plugin"] == "inventory"
    assert records["platform record"]["plugin"] is None


def test_values_given_with_extra_are_kept() -> None:
    record = logging.makeLogRecord({"msg": "x", "plugin": "given", "request_id": "r-1"})
    assert ContextFilter().filter(record)
    assert (record.plugin, record.request_id, record.correlation_id) == ("given", "r-1", "r-1")


# -- chatterfix start as a process -----------------------------------------------------------


def run_gateway(tmp_path: Path, *args: str, request_id: str) -> list[dict[str, Any]]:
    """Start `chatterfix start`, make one request, stop it; its JSON log records."""
    with gateway(sys.executable, *args, cwd=tmp_path, env={"NO_COLOR": "1"}) as url:
        response = httpx.get(url + "/api/hello", headers={"X-Request-ID": request_id})
        assert response.status_code == 200
    lines = gateway_log(tmp_path, url).read_text().splitlines()
    # Lines other than log records (the start-up banner) are plain text.
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.slow
def test_chatterfix_start_writes_json_access_lines_to_stderr(tmp_path: Path) -> None:
    records = run_gateway(tmp_path, request_id="proc-trace-1")
    access = by_logger(records, "chatterfix.gateway.access")
    [hello] = [r for r in access if r["request_id"] == "proc-trace-1"]
    assert (hello["method"], hello["path"], hello["status"]) == ("GET", "/api/hello", 200)
    assert hello["plugin"] == "hello"
    assert hello["duration_ms"] >= 0
    assert hello["client"].startswith("127.0.0.1:")
    # uvicorn's own records come through the same handler, as JSON; its access log is off.
    assert any(r["message"].startswith("Uvicorn running on") for r in records)
    assert by_logger(records, "uvicorn.access") == []


@pytest.mark.slow
def test_chatterfix_start_no_access_log(tmp_path: Path) -> None:
    records = run_gateway(tmp_path, "--no-access-log", request_id="proc-trace-2")
    assert by_logger(records, "uvicorn.error")  # it did log, as JSON
    assert by_logger(records, "chatterfix.gateway.access") == []
