"""A hostile host's connection flood, as its own process (the host is not the gateway: its
work must not be measured as the gateway's): `python -m tests.hostile.flood HOST PORT
SOURCE COUNT SECONDS MODE`. COUNT connections are held open at once, each reopened at most
every 0.5 s once the server closes it, for at most SECONDS (or until stdin closes). MODE:
"idle" opens TCP and says nothing; "http" alternates that with TLS and half a request
head. Prints {"attempts": …, "most_held": …} as JSON when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

UNFINISHED = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Flood:
    def __init__(self, host: str, port: int, source: str, mode: str) -> None:
        self.host, self.port, self.source, self.mode = host, port, source, mode
        self.stop = asyncio.Event()
        self.held = self.most_held = self.attempts = 0
        self.tls = no_verify()  # one context: making one reads the system's CA store

    async def slot(self, n: int) -> None:
        tls = self.mode == "http" and n % 2 == 1
        while not self.stop.is_set():
            writer = None
            self.attempts += 1
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.host, self.port, local_addr=(self.source, 0),
                    ssl=self.tls if tls else None, server_hostname="" if tls else None), 5)
                if tls:
                    writer.write(UNFINISHED)
                self.held += 1
                self.most_held = max(self.most_held, self.held)
                try:
                    await self._until_closed(reader)
                finally:
                    self.held -= 1
            except (OSError, TimeoutError, ssl.SSLError):
                pass
            finally:
                if writer is not None:
                    writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.5)

    async def _until_closed(self, reader: asyncio.StreamReader) -> None:
        stopped = asyncio.ensure_future(self.stop.wait())
        read = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({stopped, read}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, read):
            task.cancel()


async def main(host: str, port: int, source: str, count: int, seconds: float,
               mode: str) -> dict[str, int]:
    flood = Flood(host, port, source, mode)
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)  # the test ends us by closing stdin
    slots = [asyncio.create_task(flood.slot(n)) for n in range(count)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(closed), seconds)
    flood.stop.set()
    await asyncio.gather(*slots)
    return {"attempts": flood.attempts, "most_held": flood.most_held}


@contextlib.contextmanager
def flooding(host: str, port: int, source: str, count: int, seconds: float, mode: str,
             prefix: tuple[str, ...] = ()) -> Iterator[dict[str, int]]:
    """Run a flood beside the test (after `prefix`: say, in a namespace); what it did is
    in the dict once the block ends."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.hostile.flood", host, str(port), source, str(count),
         str(seconds), mode], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    figures: dict[str, int] = {}
    try:
        yield figures
    finally:
        try:
            out, _ = proc.communicate(timeout=30)  # closes its stdin: the flood ends
            figures.update(json.loads(out or b"{}"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port, source, count, seconds, mode = sys.argv[1:7]
    print(json.dumps(asyncio.run(main(host, int(port), source, int(count), float(seconds),
                                      mode))), flush=True)
    os._exit(0)  # the stdin reader thread may still be blocked
