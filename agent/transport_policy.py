"""Production transport rule, shared by the agent and the fleet: no plaintext MQTT or HTTP to
another machine unless the operator says so explicitly (`allow_insecure_transport = true`).

Why: telemetry, MQTT passwords, API tokens and model bundles would cross the network readable
and, for MQTT, forgeable by anyone on the path. Loopback stays allowed (a TLS-terminating proxy or
a local broker bridge on the same host is the usual production layout).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlparse

PLAINTEXT_SCHEMES = {"mqtt": "mqtts", "http": "https", "ws": "wss", "tcp": "mqtts"}


class InsecureTransportError(ValueError):
    """A plaintext URL to a remote host in production mode."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_remote(url: str) -> bool:
    """True for mqtt:// or http:// (and ws://) to a host that is not this machine."""
    u = urlparse(url)
    return u.scheme.lower() in PLAINTEXT_SCHEMES and not is_loopback(u.hostname or "")


def check_transport(urls: Mapping[str, str | None], allow_insecure: bool) -> None:
    """Raise InsecureTransportError naming the first setting with a plaintext remote URL."""
    if allow_insecure:
        return
    for name, url in urls.items():
        if url and insecure_remote(url):
            u = urlparse(url)
            raise InsecureTransportError(
                f"production mode refuses {name} = {u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''} "
                f"(plaintext to a remote host): use {PLAINTEXT_SCHEMES[u.scheme.lower()]}:// or set "
                f"allow_insecure_transport = true")
