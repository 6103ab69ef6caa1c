"""(d) The admin page: what a password check costs, and the dashboard's API under load.

Password check: one argon2id verification with the gateway's own parameters
(`gateway.web.auth.HASHER` through `auth.verify_password`), against the PBKDF2-SHA512 / 101
check the broker does for every device connect (`gateway.credentials.secrets`). 1 / median is
how many guesses one core can try per second: what bounds an offline brute force.

Dashboard API: `GET /api/v1/status` with a read-only API token on a real gateway (in-process
lab: daemon, broker child, a few simulated devices reporting), against a bare aiohttp handler
returning a JSON body of the same size from the same process, on another loopback port. The
load comes from a separate process (this module run as `python -m bench.web`): a small
keep-alive HTTP/1.1 client with 50 connections, each sending its next request as soon as
the previous answer is in, for a fixed time. Gateway and bare alternate round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.common import (
    START_TIMEOUT_S,
    Figure,
    child,
    cpu_seconds,
    log_tail,
    percentile,
    progress,
)
from gateway.credentials.secrets import hash_password as device_hash
from gateway.sim.lab import free_port, start_lab
from gateway.web import auth
from gateway.web.accounts import Principal
from gateway.web.gate import MAX_PER_SOURCE

CLIENTS = 50
PATH = "/api/v1/status"
ADMIN = ("bench-admin", "Velvet-Orchard-Compass-58")
DEVICES = [("bench-plug-1", "plug"), ("bench-plug-2", "plug"), ("bench-bulb", "bulb"),
           ("bench-thermostat", "thermostat"), ("bench-sensor", "sensor")]
DEVICE_INTERVAL_S = 1.0  # every device reports once a second while the load runs
TOKEN_ENV = "BENCH_WEB_TOKEN"


# -- password verification ---------------------------------------------------------------

def _timed(fn: Any, runs: int) -> list[float]:
    """Milliseconds per call, one sample per call."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def password_figures(quick: bool) -> list[Figure]:
    runs = 5 if quick else 20
    password = ADMIN[1]
    encoded = auth.hash_password(password)
    device = device_hash(password)

    def argon2_ok() -> None:
        if not auth.verify_password(encoded, password):
            raise RuntimeError("argon2id verification failed")

    def pbkdf2_ok() -> None:
        if not device.verify(password):
            raise RuntimeError("PBKDF2 verification failed")

    _timed(argon2_ok, 1)  # warm-up: first allocation of the 19 MiB
    _timed(pbkdf2_ok, 10)
    argon2 = _timed(argon2_ok, runs)
    pbkdf2 = _timed(pbkdf2_ok, max(runs, 200))  # ~0.1 ms each: more samples, same cost
    sha256 = _timed(lambda: hashlib.sha256(password.encode()).digest(), 200)
    h = auth.HASHER
    params = f"m={h.memory_cost // 1024} MiB, t={h.time_cost}, p={h.parallelism}"
    p50 = percentile(argon2, 50), percentile(pbkdf2, 50)
    p95 = percentile(argon2, 95), percentile(pbkdf2, 95)
    progress(f"password: argon2id ({params}) p50 {p50[0]:.1f} ms, PBKDF2-SHA512/"
             f"{device.iterations} p50 {p50[1] * 1000:.0f} µs, SHA-256 p50 "
             f"{percentile(sha256, 50) * 1000:.1f} µs")
    return [
        Figure(f"argon2id verify p50 (ms, n={runs}; base: PBKDF2/{device.iterations})", *p50,
               note=params),
        Figure(f"argon2id verify p95 (ms, n={runs})", *p95),
        # No baseline column: the ratio would print as 0.00x; the p50 row has it already.
        Figure("argon2id guesses/s, one core (1/p50)", 1000 / p50[0],
               note=f"PBKDF2/{device.iterations}: {1000 / p50[1]:,.0f}/s"),
    ]


# -- the servers -------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def bare_server(body: Any) -> AsyncIterator[int]:
    """A plain aiohttp app on a free loopback port: one route, no middleware, serialising
    `body` per request as the gateway does."""

    async def status(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get(PATH, status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield port
    finally:
        await runner.cleanup()


async def fetch_once(port: int, token: str) -> bytes:
    """One request in-process, to check the token works and learn the body's size."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes(port, token))
        status, body = await read_response(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if status != 200:
        raise RuntimeError(f"GET {PATH} on port {port}: HTTP {status}: {body[:200]!r}")
    return body


async def load(port: int, token: str, warmup_s: float, duration_s: float,
               workdir: Path, label: str) -> dict[str, Any]:
    """Run the load client as a separate process; its result, with this process's CPU."""
    log_path, out_path = workdir / f"load-{label}.log", workdir / f"load-{label}.json"
    out_path.unlink(missing_ok=True)
    args = [sys.executable, "-m", "bench.web", "127.0.0.1", str(port), str(CLIENTS),
            str(warmup_s), str(duration_s), str(out_path)]
    cpu0 = cpu_seconds(os.getpid())
    async with child(args, log_path, env={TOKEN_ENV: token}) as proc:
        try:
            code = await asyncio.wait_for(proc.wait(), START_TIMEOUT_S + warmup_s + duration_s)
        except TimeoutError:
            raise RuntimeError(f"load client timed out:\n{log_tail(log_path)}") from None
        if code != 0 or not out_path.exists():
            raise RuntimeError(f"load client failed ({code}):\n{log_tail(log_path)}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["server_cpu_s"] = cpu_seconds(os.getpid()) - cpu0
    return result


async def dashboard_figures(workdir: Path, quick: bool) -> list[Figure]:
    rounds, warmup_s, duration_s = (1, 0.5, 2.0) if quick else (4, 0.5, 2.5)
    port = free_port()
    lab = await start_lab(workdir / "state",
                          extra_config=f'\n[web]\nlisten = ["127.0.0.1:{port}"]\n')
    try:
        lab.daemon.store.add_user(ADMIN[0], "admin", auth.hash_password(ADMIN[1]))
        _, token = lab.daemon.accounts.create_token(Principal(ADMIN[0], "admin"), "bench",
                                                    "read")
        agents = await lab.add_devices(DEVICES, interval_s=DEVICE_INTERVAL_S)
        await asyncio.gather(*(a.session.wait_connected(START_TIMEOUT_S) for a in agents))
        await asyncio.sleep(1.5)  # a first report from each, so the status has something
        body = await fetch_once(port, token)
        async with bare_server(json.loads(body)) as bare_port:
            bare_body = await fetch_once(bare_port, token)
            progress(f"dashboard: status body {len(body)} B (bare: {len(bare_body)} B), "
                     f"{len(DEVICES)} devices reporting every {DEVICE_INTERVAL_S:g} s, "
                     f"{CLIENTS} clients, {rounds} x {duration_s:g} s each")
            results: dict[str, list[dict[str, Any]]] = {"gateway": [], "bare": []}
            for _ in range(rounds):
                for label, target in (("gateway", port), ("bare", bare_port)):
                    results[label].append(await load(target, token, warmup_s, duration_s,
                                                     workdir, label))
    finally:
        await lab.stop()
    return summarize(results)


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[Figure]:
    def merged(label: str) -> dict[str, float]:
        runs = results[label]
        latencies = [x for r in runs for x in r["latencies_ms"]]
        requests = sum(r["total"] for r in runs)
        return {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "rps": len(latencies) / sum(r["window_s"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "cpu_us": sum(r["server_cpu_s"] for r in runs) / requests * 1e6,
            "client_cpu": sum(r["client_cpu_s"] for r in runs)
            / sum(r["elapsed_s"] for r in runs),
            "n": len(latencies),
        }

    gw, bare = merged("gateway"), merged("bare")
    for label, m in (("gateway", gw), ("bare", bare)):
        progress(f"dashboard {label}: p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms, "
                 f"{m['rps']:,.0f} req/s, {m['errors']:.0f} errors, server CPU "
                 f"{m['cpu_us']:.0f} µs/request, load client busy {m['client_cpu']:.0%}")
    errors = f"{gw['errors']:.0f} errors" if gw["errors"] else ""
    return [
        Figure(f"GET {PATH} p50 (ms, {CLIENTS} clients, n={gw['n']:.0f})", gw["p50"],
               bare["p50"], note=errors),
        Figure(f"GET {PATH} p99 (ms, {CLIENTS} clients)", gw["p99"], bare["p99"]),
        Figure(f"GET {PATH} requests/s", gw["rps"], bare["rps"]),
        Figure(f"GET {PATH} server CPU (µs/request)", gw["cpu_us"], bare["cpu_us"]),
    ]


async def measure(workdir: Path, quick: bool) -> list[Figure]:
    figures = await asyncio.to_thread(password_figures, quick)
    return figures + await dashboard_figures(workdir, quick)


# -- the load client (a separate process) ------------------------------------------------

def request_bytes(port: int, token: str) -> bytes:
    return (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (aiohttp's JSON)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, await reader.readexactly(int(value))
    raise RuntimeError(f"no Content-Length in the response: {lines[0]!r}")


def source(n: int) -> str:
    """The loopback address client `n` comes from: the admin page admits MAX_PER_SOURCE
    connections per address, so the clients are spread over as many hosts as that needs
    (for the bare baseline too)."""
    return f"127.0.0.{1 + n // MAX_PER_SOURCE}"


async def _connection(port: int, request: bytes, start: float, end: float,
                      out: dict[str, Any], n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source(n), 0))
    try:
        while (t0 := time.perf_counter()) < end:
            writer.write(request)
            status, _ = await read_response(reader)
            t1 = time.perf_counter()
            out["total"] += 1
            if t0 < start:
                continue  # warm-up
            if status == 200:
                out["latencies_ms"].append(round((t1 - t0) * 1000, 4))
                out["last"] = max(out["last"], t1)
            else:
                out["errors"] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def client(port: int, clients: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    request = request_bytes(port, os.environ[TOKEN_ENV])
    t_begin, cpu0 = time.perf_counter(), time.process_time()
    start = t_begin + warmup_s
    end = start + duration_s
    out: dict[str, Any] = {"total": 0, "errors": 0, "latencies_ms": [], "last": start}
    results = await asyncio.gather(
        *(_connection(port, request, start, end, out, n) for n in range(clients)),
        return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    out["errors"] += len(failed)
    if failed and not out["latencies_ms"]:
        raise failed[0]
    out["window_s"] = out.pop("last") - start
    out["elapsed_s"] = time.perf_counter() - t_begin
    out["client_cpu_s"] = time.process_time() - cpu0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web",
                                     description=f"HTTP load on GET {PATH}; token in "
                                                 f"${TOKEN_ENV}")
    parser.add_argument("host", choices=["127.0.0.1"])  # loopback only
    parser.add_argument("port", type=int)
    parser.add_argument("clients", type=int)
    parser.add_argument("warmup_s", type=float)
    parser.add_argument("duration_s", type=float)
    parser.add_argument("out", type=Path, help="the result goes here, as JSON")
    args = parser.parse_args(argv)
    result = asyncio.run(client(args.port, args.clients, args.warmup_s, args.duration_s))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
