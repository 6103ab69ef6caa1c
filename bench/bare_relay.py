"""The throughput baseline: the simplest idiomatic aiomqtt relay, as its own process.

    BENCH_RELAY_PASSWORD=… python -m bench.bare_relay HOST PORT USERNAME [MAX_SECONDS]

Relays bench/<id>/telemetry to bench/<id>/state. Prints "ready" once subscribed; exits on
SIGTERM or after MAX_SECONDS (default 600), whichever comes first.

It sets TCP_NODELAY like the gateway does (gateway.mqtt.SOCKET_OPTIONS): paho leaves Nagle
on, and in a closed loop the last packets of every round then wait for a delayed ACK (up to
40 ms), which would make the baseline slow for a reason that has nothing to do with code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys

import aiomqtt

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


async def relay(host: str, port: int, username: str, password: str) -> None:
    async with aiomqtt.Client(host, port, username=username, password=password,
                              identifier="bench-relay", socket_options=NODELAY) as client:
        await client.subscribe("bench/+/telemetry")
        print("ready", flush=True)
        async for message in client.messages:
            device_id = message.topic.value.split("/")[1]
            await client.publish(f"bench/{device_id}/state", message.payload)


def main() -> None:
    host, port, username = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    max_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 600.0
    password = os.environ["BENCH_RELAY_PASSWORD"]
    with contextlib.suppress(TimeoutError, KeyboardInterrupt):
        asyncio.run(asyncio.wait_for(relay(host, port, username, password), max_seconds))


if __name__ == "__main__":
    main()
