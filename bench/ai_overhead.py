"""Overhead of the AI service around a provider.

Calls/s of ``platform.ai.generate_text(prompt, provider="openai")`` against a loopback
OpenAI-compatible server, and of raw ``httpx.AsyncClient`` calls to the same server that
send the same request and read the same field of the answer (the baseline: what any client
pays at the least). The service adds: the request and result types, key resolution, the
retry loop with its time limit, a call record, an ``ai.analysis.completed`` event.

* The server is a separate process (uvicorn, a plain Starlette route answering a fixed
  chat completion in OpenAI's shape), pinned to CPU 0 when ``taskset`` exists; this client
  process is pinned to CPU 1.
* Each figure: ``--calls`` calls spread over ``concurrency`` tasks; rounds alternate
  between raw and service, ``--rounds`` times each (default 5), after a warm-up round; the
  best round of each is kept.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _common import (
    HOST,
    arg_parser,
    clean_env,
    free_port,
    machine_info,
    pinned,
    print_table,
    ratio,
    start_process,
    stop_process,
    wait_for_200,
    write_json,
)

TARGET_RATIO = 0.9
PROMPT = "Summarise: pump P-101 in building 3 is leaking oil."
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Replace the mechanical seal of P-101."},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
}


def serve(port: int) -> None:
    """The loopback OpenAI-compatible server (run as ``ai_overhead.py --serve PORT``)."""
    import json

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body = json.dumps(ANSWER).encode()

    async def completions(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/health", health),
        ]
    )
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


async def measure(calls: int, concurrency: int, one: Callable[[], Awaitable[Any]]) -> float:
    per_task = calls // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await one()

    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return per_task * concurrency / (time.perf_counter() - began)


async def run_figure(url: str, calls: int, concurrency: int, rounds: int) -> dict[str, Any]:
    import httpx

    import chatterfix

    key = "sk-bench-not-a-real-key"
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    raw_client = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )

    async def raw() -> str:
        response = await raw_client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])

    platform = chatterfix.Platform(
        {"ai": {"providers": {"openai": {"base_url": f"{url}/v1"}}}},
        builtins=False,
        load_entrypoints=False,
    )
    os.environ["OPENAI_API_KEY"] = key
    results: dict[str, list[float]] = {"raw": [], "service": []}
    async with platform:
        ai = platform.ai

        async def through_service() -> str:
            return await ai.generate_text(PROMPT, provider="openai")

        assert await through_service() == await raw()
        modes = {"raw": raw, "service": through_service}
        for mode in modes.values():  # warm-up: connections, caches
            await measure(max(concurrency, calls // 5), concurrency, mode)
        for _ in range(rounds):
            for name, mode in modes.items():
                results[name].append(await measure(calls, concurrency, mode))
        records = len(ai.records)
    await raw_client.aclose()
    best = {name: max(values) for name, values in results.items()}
    return {
        "concurrency": concurrency,
        "calls": calls,
        "raw_per_s": best["raw"],
        "service_per_s": best["service"],
        "ratio": ratio(best["service"], best["raw"]),
        "all_rounds": results,
        "records_kept": records,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    parser = arg_parser(__doc__ or "")
    parser.add_argument("--calls", type=int, default=4000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (best kept)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    port = free_port()
    server = start_process(
        pinned([sys.executable, __file__, "--serve", str(port)], 0), env=clean_env()
    )
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    if 1 in usable and len(usable) >= 2:
        os.sched_setaffinity(0, {1})
    figures = []
    try:
        wait_for_200(port, "/health", server)
        url = f"http://{HOST}:{port}"
        for concurrency in args.concurrency:
            figures.append(anyio.run(run_figure, url, args.calls, concurrency, args.rounds))
    finally:
        stop_process(server)

    print_table(
        f"generate_text via the AI service vs raw httpx, calls/s (best of {args.rounds})",
        ["concurrency", "service calls/s", "raw httpx calls/s", "ratio", "target"],
        [
            [
                str(row["concurrency"]),
                f"{row['service_per_s']:,.0f}",
                f"{row['raw_per_s']:,.0f}",
                f"{row['ratio']:.2f}",
                f">= {TARGET_RATIO}",
            ]
            for row in figures
        ],
    )
    met = all(row["ratio"] >= TARGET_RATIO for row in figures)
    print(
        f"Target: service/raw >= {TARGET_RATIO} at every concurrency: {'met' if met else 'MISSED'}"
    )
    write_json(
        args.json,
        {
            "benchmark": "ai_overhead",
            "machine": machine_info(),
            "target": {"ratio_at_least": TARGET_RATIO, "met": met},
            "figures": figures,
        },
    )


if __name__ == "__main__":
    main()
