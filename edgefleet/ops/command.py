"""The options every operator command takes (--url, --token, --profile, --timeout, --json), in
one decorator, so each command stays a few lines and they all behave alike."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from edgefleet.ops.client import ApiClient
from edgefleet.ops.output import emit
from edgefleet.ops.profile import connect

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@dataclass
class Ops:
    """What a command needs: a client (connected on first use, so --help and local checks never
    need a fleet) and whether to print JSON."""

    url: str | None
    token: str | None
    profile: str | None
    timeout: float | None
    as_json: bool
    _client: ApiClient | None = field(default=None, repr=False)

    @property
    def api(self) -> ApiClient:
        if self._client is None:
            self._client = connect(self.url, self.token, self.profile, self.timeout)
        return self._client

    def emit(self, data: Any, render: Callable[[Any], str | None]) -> None:
        emit(self.as_json, data, render)


_OPTIONS = [
    click.option("--url", metavar="URL", default=None, show_default="$EDGEFLEET_URL, else the profile's url",
                 help="Fleet manager base URL, e.g. http://127.0.0.1:8080."),
    click.option("--token", metavar="TOKEN", default=None,
                 show_default="$EDGEFLEET_TOKEN, else the profile's token",
                 help="API token, sent as 'Authorization: Bearer TOKEN'."),
    click.option("--profile", metavar="NAME", default=None, show_default="the profile file's default",
                 help="Named profile from $EDGEFLEET_PROFILE or ~/.config/edgefleet/profile.toml."),
    click.option("--timeout", type=click.FloatRange(min=0.1), default=None, show_default="30, or the profile's",
                 help="Seconds to wait for each HTTP answer."),
    click.option("--json", "as_json", is_flag=True, default=False,
                 help="Print the API's JSON response instead of a table (stable, for scripts)."),
]


def api_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection and output options; the command receives an `Ops` first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, url: str | None, token: str | None, profile: str | None, timeout: float | None,
                as_json: bool, **kw: Any) -> Any:
        return fn(Ops(url, token, profile, timeout, as_json), *args, **kw)

    for opt in reversed(_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper
