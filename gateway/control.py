"""The local control socket: how `home-gateway device …` talks to the running daemon.

A Unix socket in the runtime directory, mode 0600 (only the service user and root).
One JSON request per connection: {"op": "...", "args": {...}} -> {"ok": true, "result": …}
or {"ok": false, "error": "…"}. It exists so that a new device's secret goes straight from
the daemon, which creates it on the live broker, to the admin's terminal, never to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A request the daemon refused; str() is the reason shown to the admin."""


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(old)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), 10)
            response = await self._dispatch(raw)
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, raw: bytes) -> dict[str, Any]:
        try:
            request = json.loads(raw[:MAX_REQUEST])
            op, args = request["op"], request.get("args", {})
            if not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'malformed request (expected {"op": …, "args": {…}})'}
        handler = self.handlers.get(op)
        if handler is None:
            return {"ok": False, "error": f"unknown operation {op!r}"}
        try:
            return {"ok": True, "result": await handler(args)}
        except (ControlError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control: %s failed", op)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}


def request(path: Path, op: str, timeout: float = 30.0, **args: Any) -> Any:
    """Send one request (blocking; for the CLI). Raises ConnectionError when no daemon
    listens and ControlError when it refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(f"no running gateway at {path}") from exc
        except PermissionError as exc:  # connect() does not name the socket
            raise PermissionError(exc.errno, exc.strerror, str(path)) from None
        sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    response = json.loads(data)
    if not response.get("ok"):
        raise ControlError(response.get("error", "request failed"))
    return response.get("result")
