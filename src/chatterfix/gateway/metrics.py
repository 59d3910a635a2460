"""``GET /metrics``: the gateway's figures in the Prometheus text format.

Each platform has its own ``prometheus_client.CollectorRegistry`` (``platform.metrics.
registry``), never the process-wide default one, so that several platforms can run side by
side. Plugins may register their own collectors or metrics on it.

Counting requests is on every request's path, so it does not go through
``prometheus_client``'s metric objects (a lock and a label lookup per call): the routing
layer adds to plain counters and fixed histogram buckets (:class:`RequestMetrics`), and a
collector turns them into metric families only when ``/metrics`` is scraped. Everything
else (plugins, events, upstream services) is read at scrape time.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from chatterfix.gateway.routing import platform_of
from chatterfix.plugins import PluginState
from chatterfix.route_options import openapi, rate_limit

if TYPE_CHECKING:
    from chatterfix.platform import Platform

logger = logging.getLogger("chatterfix.gateway")

# Seconds. In-process routes answer in well under a millisecond, proxied ones in a few.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = [*(repr(float(bound)) for bound in BUCKETS), "+Inf"]  # as prometheus_client writes them
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Series:
    """One route template and method: its latency histogram and its counts by status."""

    __slots__ = ("buckets", "statuses", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.statuses: dict[int, int] = {}


class RequestMetrics:
    """Requests by route template, method and status, and their latencies."""

    __slots__ = ("_series",)

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (route, method)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        series.sum += seconds
        statuses = series.statuses
        statuses[status] = statuses.get(status, 0) + 1

    def families(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "chatterfix_http_requests",
            "HTTP requests answered, by route template, method and status "
            "(status 0: the client left before any response)",
            labels=["route", "method", "status"],
        )
        latency = HistogramMetricFamily(
            "chatterfix_http_request_duration_seconds",
            "Time from a request's arrival in the gateway to the end of its response",
            labels=["route", "method"],
        )
        for (route, method), series in sorted(self._series.items()):
            for status, count in sorted(series.statuses.items()):
                requests.add_metric([route, method, str(status)], count)
            cumulative = []
            total = 0
            for le, count in zip(_LE, series.buckets, strict=True):
                total += count
                cumulative.append((le, float(total)))
            latency.add_metric([route, method], cumulative, series.sum)
        yield requests
        yield latency


def route_labels(routes: Iterable[Any]) -> dict[int, str]:
    """Route (by ``id``; routes inside mounts too) -> its full path template."""
    labels: dict[int, str] = {}

    def walk(items: Iterable[Any], prefix: str) -> None:
        for route in items:
            path = prefix + str(getattr(route, "path", ""))
            labels[id(route)] = path
            if isinstance(route, Mount):
                walk(route.routes or (), path)

    walk(routes, "")
    return labels


class GatewayCollector:
    """Turns the platform's state into metric families when ``/metrics`` is scraped."""

    def __init__(self, platform: Platform, requests: RequestMetrics) -> None:
        self.platform = platform
        self.requests = requests

    def describe(self) -> list[Metric]:
        return []  # collected fresh on each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        platform = self.platform
        info = GaugeMetricFamily(
            "chatterfix_platform_info", "The platform's version", labels=["version"]
        )
        info.add_metric([platform.version], 1)
        yield info
        yield GaugeMetricFamily(
            "chatterfix_platform_uptime_seconds", "Seconds since start", value=platform.uptime
        )
        yield from self.requests.families()
        gateway = platform.asgi_app
        yield GaugeMetricFamily(
            "chatterfix_http_requests_in_flight",
            "Requests being served",
            value=gateway.routing.in_flight,
        )
        yield from self._plugins()
        yield from self._events()
        yield from self._upstreams()
        failures = getattr(gateway.rate_limiter.backend, "failures", None)
        if failures is not None:
            yield CounterMetricFamily(
                "chatterfix_rate_limit_backend_errors",
                "Rate-limit checks let through because the shared backend failed",
                value=failures,
            )

    def _plugins(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "chatterfix_plugin_state",
            "1 for each plugin's current state, 0 for the others",
            labels=["plugin", "state"],
        )
        for name, record in sorted(self.platform.plugins.records.items()):
            for state in PluginState:
                states.add_metric([name, state.value], 1 if record.state is state else 0)
        yield states

    def _events(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "chatterfix_events",
            "Events delivered to this process's bus (emitted here or received from the "
            "broker), by type; types past the first 1000 count as 'other'",
            labels=["type"],
        )
        for event_type, count in sorted(self.platform.events.type_counts.items()):
            events.add_metric([event_type], count)
        yield events

    def _upstreams(self) -> Iterator[Metric]:
        stats = discovery_stats(self.platform)
        labels = ["service", "url"]
        healthy = GaugeMetricFamily(
            "chatterfix_upstream_healthy", "1 when the instance is healthy", labels=labels
        )
        requests = CounterMetricFamily(
            "chatterfix_upstream_requests", "Requests proxied to the instance", labels=labels
        )
        errors = CounterMetricFamily(
            "chatterfix_upstream_errors",
            "Proxied requests that failed (connection errors, 5xx)",
            labels=labels,
        )
        in_flight = GaugeMetricFamily(
            "chatterfix_upstream_in_flight", "Requests being proxied", labels=labels
        )
        latency = GaugeMetricFamily(
            "chatterfix_upstream_latency_seconds",
            "Latency quantiles of the instance's recent requests",
            labels=[*labels, "quantile"],
        )
        for entry in stats:
            try:
                names = [str(entry["service"]), str(entry["url"])]
                healthy.add_metric(names, 1 if entry.get("healthy") else 0)
                requests.add_metric(names, float(entry.get("requests") or 0))
                errors.add_metric(names, float(entry.get("errors") or 0))
                in_flight.add_metric(names, float(entry.get("in_flight") or 0))
                for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")):
                    value = entry.get(key)
                    if value is not None:
                        latency.add_metric([*names, quantile], float(value) / 1000)
            except (KeyError, TypeError, ValueError):
                logger.debug("discovery stats entry skipped: %r", entry)
        yield from (healthy, requests, errors, in_flight, latency)


def discovery_stats(platform: Platform) -> list[dict[str, Any]]:
    """Per-instance figures from service discovery; none when this platform has no
    discovery service (or it fails: a scrape must not)."""
    from chatterfix.platform import ServiceNotAvailable

    try:
        stats = platform.discovery.stats()
    except (ServiceNotAvailable, AttributeError):
        return []
    except Exception:
        logger.exception("service discovery stats are unavailable")
        return []
    return [entry for entry in stats or () if isinstance(entry, dict)]


class Metrics:
    """A platform's metrics: its own registry, and the request counters."""

    def __init__(self, platform: Platform) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestMetrics()
        self.registry.register(GatewayCollector(platform, self.requests))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@rate_limit(None)
@openapi(
    summary="Prometheus metrics",
    description="Requests by route template, method and status; latency histograms; "
    "plugin states; event counts; upstream instances; the process.",
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
)
async def metrics_endpoint(request: Request) -> Response:
    platform = platform_of(request)
    body, content_type = platform.asgi_app.metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


METRICS_ROUTES = [Route("/metrics", metrics_endpoint, methods=["GET"])]
