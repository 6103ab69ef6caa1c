"""A port scan or fuzzer against the admin page: requests HTTP cannot parse get their
status alone, with the page's security headers, nothing of what was sent echoed back, and
one short log line each (never a traceback)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest

from tests.hostile.corpus import HTTP_PROBES
from tests.hostile.flood import no_verify
from tests.web.kit import web_lab


async def _send(port: int, probe: bytes, tls: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        writer.write(probe)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_unparsable_requests_get_a_bare_400(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  tls: bool) -> None:
    async with web_lab(tmp_path / "state", extra='tls = "always"\n' if tls else "") as lab:
        port = int(lab.daemon.web.urls[0].rstrip("/").rsplit(":", 1)[1])
        caplog.clear()
        caplog.set_level(logging.INFO)
        for probe, secret in HTTP_PROBES:
            answer = await _send(port, probe, no_verify() if tls else None)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 400 ") or head.startswith(b"HTTP/1.1 400 "), answer
            assert body == b"400 Bad Request\n", answer
            headers = head.decode().lower()
            for header in ("content-security-policy:", "x-content-type-options: nosniff",
                           "server: home-gateway", "cache-control: no-store"):
                assert header in headers, (header, answer)
            assert ("strict-transport-security:" in headers) == tls
            assert secret not in answer, (probe, answer)
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.web.app"]
        assert len(lines) == len(HTTP_PROBES)
        assert all(line.startswith("admin page: answered 400 to 127.0.0.1 (") for line in lines)
