"""A small open-loop HTTP/1.1 load generator on plain asyncio streams, run as its own process.

Open loop: request ``i`` is due at ``start + i / rate`` whether or not earlier
requests have finished, and its latency is measured from that due time, so a
slow server shows up as latency instead of silently lowering the offered rate
(no "coordinated omission"). Service time, measured from the actual send, is
reported too.

Why not httpx: measured on this project's 2-core machines, httpx.AsyncClient
spends 1.3-2.3 ms of CPU per request, so at 500 requests/s the client alone
needed more than a core and became the bottleneck being measured. Keep-alive
connections driven with asyncio streams cost a few tens of microseconds.
Only what the benchmark needs is implemented: GET, Content-Length or chunked
bodies, keep-alive.

    python -m benchmarks.loadgen --url 'http://127.0.0.1:8421/v1/conversations/{id}' \\
        --ids ids.txt --rate 500 --duration 20 --header 'Authorization: Bearer KEY'

Prints one JSON object with the percentiles on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit


class _Conn:
    """One keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, keep-alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection") != "close"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


async def run(url: str, ids: list[str], rate: float, duration: float, headers: dict[str, str],
              timeout: float, seed: int, max_in_flight: int = 128) -> dict[str, Any]:
    parts = urlsplit(url.replace("{id}", "ID"))
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path_template = url[url.index(parts.netloc) + len(parts.netloc):] or "/"
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    rng = random.Random(seed)
    total = int(rate * duration)
    latency: list[float] = []
    service: list[float] = []
    statuses: dict[str, int] = {}
    idle: list[_Conn] = []
    slots = asyncio.Semaphore(max_in_flight)

    async def send(path: str) -> str:
        """One GET; a kept-alive connection the server closed meanwhile is retried once on a new one."""
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        for attempt in range(2):
            reused = attempt == 0 and bool(idle)
            conn = idle.pop() if reused else None  # a retry always gets a fresh connection
            try:
                if conn is None:
                    conn = _Conn(*await asyncio.open_connection(host, port))
                conn.writer.write(request)
                status, keep = await asyncio.wait_for(_read_response(conn.reader), timeout)
                if keep:
                    idle.append(conn)
                else:
                    conn.close()
                return str(status)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                if conn is not None:
                    conn.close()
                if not (reused and attempt == 0 and not getattr(exc, "partial", b"")):
                    return type(exc).__name__
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                return type(exc).__name__
        return "Retried"

    async def one(path: str, due: float) -> None:
        async with slots:
            sent = time.perf_counter()
            key = "QueuedPastTimeout"
            if sent - due <= timeout:
                key = await send(path)
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
        path = path_template.replace("{id}", quote(rng.choice(ids), safe="")) if ids else path_template
        task = asyncio.create_task(one(path, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
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
    parser.add_argument("--url", required=True, help="http:// URL; '{id}' is replaced by a random id from --ids")
    parser.add_argument("--ids", type=Path, help="file with one id per line")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (offered)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-in-flight", type=int, default=128, help="connections (and requests in flight)")
    args = parser.parse_args(argv)
    headers = {k.strip(): v.strip() for k, v in (h.split(":", 1) for h in args.header)}
    ids = args.ids.read_text().split() if args.ids else []
    coro = run(args.url, ids, args.rate, args.duration, headers, args.timeout, args.seed, args.max_in_flight)
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
