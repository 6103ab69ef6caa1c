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
