"""Input a stranger controls, shared by the tests that feed it to the gateway."""

from __future__ import annotations

# MQTT client ids a stranger may choose (a refused login names its id in Mosquitto 2.0.21's
# log; Home Assistant's and enrollment tokens' logins may pick any): the broker's own log
# phrases, another device's id and login, quotes, bidirectional-text and blank ids.
# Mosquitto itself refuses control characters (a line break) in a client id.
HOSTILE_CLIENT_IDS = (
    "Client plug-1 disconnected", "plug-1 disconnected.", "x disconnected, not authorised",
    "a (p2, c1, k60, u'plug-1.1')", "Socket error on client plug-1, disconnecting",
    "plug-1 has exceeded timeout, disconnecting", "plug-1 closed its connection",
    "plug-1 disconnected due to protocol error", "New connection from 10.0.0.5:1",
    "'; DROP TABLE audit; --", "plug-\u202e1", "  ",
)

# What a port scanner or fuzzer sends to an HTTP port: nothing HTTP can parse. Each names
# text that an answer must not echo back.
HTTP_PROBES = (
    (b"\x00\x01garbage-probe\r\n\r\n", b"garbage-probe"),
    (b"\x16\x03\x01\x00\x05hello-probe", b"hello-probe"),  # a TLS hello on a plain port
    (b"GET /\x00nul-probe HTTP/1.1\r\nHost: x\r\n\r\n", b"nul-probe"),
    (b"PROBEMETHOD / HTTP/9.9\r\n\r\n", b"PROBEMETHOD"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -77\r\n\r\n", b"-77"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-\xe2\x80\xaeevil: 1\r\n\r\n", b"evil"),
)
