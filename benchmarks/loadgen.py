"""A small open-loop HTTP load generator (asyncio + httpx), run as its own process.

Open loop: request ``i`` is due at ``start + i / rate`` whether or not earlier
requests have finished, and its latency is measured from that due time, so a
slow server (or a slow client) shows up as latency instead of silently lowering
the offered rate (no "coordinated omission"). Service time, measured from the
actual send, is reported too.

    python -m benchmarks.loadgen --url 'http://127.0.0.1:8421/v1/conversations/{id}' \\
        --ids ids.txt --rate 500 --duration 20 --header 'Authorization: Bearer KEY'

Prints one JSON object with the percentiles on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("loadgen")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


async def run(url: str, ids: list[str], rate: float, duration: float, headers: dict[str, str],
              timeout: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    total = int(rate * duration)
    latency: list[float] = []
    service: list[float] = []
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:
        async def one(target_url: str, due: float) -> None:
            sent = time.perf_counter()
            try:
                r = await client.get(target_url)
                await r.aread()
                key = str(r.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            done = time.perf_counter()
            statuses[key] = statuses.get(key, 0) + 1
            latency.append(done - due)
            service.append(done - sent)

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.1
        late = 0
        for i in range(total):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.005:
                late += 1
            target = url.format(id=rng.choice(ids)) if ids else url
            task = asyncio.create_task(one(target, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latency.sort()
    service.sort()
    ms = 1000.0
    ok = sum(n for k, n in statuses.items() if k.startswith("2"))
    return {
        "url": url, "offered_rate": rate, "duration_s": duration, "requests": total,
        "achieved_rate": total / elapsed, "ok": ok, "statuses": statuses, "sends_late_by_5ms": late,
        "p50_ms": percentile(latency, 50) * ms, "p90_ms": percentile(latency, 90) * ms,  # type: ignore[operator]
        "p99_ms": percentile(latency, 99) * ms, "max_ms": latency[-1] * ms,  # type: ignore[operator]
        "service_p50_ms": percentile(service, 50) * ms, "service_p99_ms": percentile(service, 99) * ms,  # type: ignore[operator]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="URL; '{id}' is replaced by a random id from --ids")
    parser.add_argument("--ids", type=Path, help="file with one id per line")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (offered)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    ids = args.ids.read_text().split() if args.ids else []
    coro = run(args.url, ids, args.rate, args.duration, headers, args.timeout, args.seed)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)  # a faster loop: less of the client's own overhead in the numbers
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
