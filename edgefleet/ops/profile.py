"""Which fleet to talk to, and with which token: flags, then the environment, then a profile file.

The profile file (TOML; `$EDGEFLEET_PROFILE`, else `$XDG_CONFIG_HOME/edgefleet/profile.toml`, else
`~/.config/edgefleet/profile.toml`) holds named profiles, like kubectl contexts:

    default = "lab"                  # used when --profile is not given
    [profiles.lab]
    url = "http://127.0.0.1:8080"
    token = "eft_..."
    [profiles.prod]
    url = "https://fleet.example.com"
    token_env = "PROD_FLEET_TOKEN"   # read the token from this variable instead of the file
    timeout = 60

Precedence, per field: --url/--token; then the profile named by --profile; then EDGEFLEET_URL and
EDGEFLEET_TOKEN; then the file's default profile. An explicit --profile beats the environment
because it is the more specific request.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml
from edgefleet.ops.client import BAD_INPUT, ApiClient, OpsError

PROFILE_KEYS = {"url": str, "token": str, "token_env": str, "timeout": (int, float)}
FILE_KEYS = {"default", "profiles"}


class ProfileError(OpsError):
    def __init__(self, message: str) -> None:
        super().__init__(message, BAD_INPUT)


def profile_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("EDGEFLEET_PROFILE"):
        return Path(env["EDGEFLEET_PROFILE"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "edgefleet" / "profile.toml"


@dataclass(frozen=True)
class Profile:
    name: str
    url: str = ""
    token: str = ""
    timeout: float | None = None
    source: str = ""


def load_profile(name: str | None, env: Mapping[str, str] | None = None) -> Profile | None:
    """The named profile (an error if it or the file is missing), or the file's default profile
    (None when there is no file or no default)."""
    env = os.environ if env is None else env
    path = profile_path(env)
    if not path.exists():
        if name:
            raise ProfileError(f"profile {name!r} requested but there is no profile file at {path}")
        return None
    data = read_toml(path, ProfileError, "profile file")
    extra = set(data) - FILE_KEYS
    if extra:
        raise ProfileError(f"profile file {path}: unknown keys {sorted(extra)} (expected 'default' and "
                           "[profiles.<name>] tables)")
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ProfileError(f"profile file {path}: 'profiles' must be a table of [profiles.<name>] tables")
    for pname, raw in profiles.items():
        _check(pname, raw, path)
    chosen = name or data.get("default") or ("default" if "default" in profiles else None)
    if chosen is None:
        return None
    if chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ProfileError(f"profile file {path} has no profile {chosen!r} (known: {known})")
    return _parse(chosen, profiles[chosen], path, env)


def _check(name: str, raw: Any, path: Path) -> None:
    """Every profile is checked, not only the one in use: a typo is reported where it is."""
    where = f"profile file {path}, [profiles.{name}]"
    if not isinstance(raw, dict):
        raise ProfileError(f"{where} must be a table")
    for key, value in raw.items():
        if key not in PROFILE_KEYS:
            raise ProfileError(f"{where}: unknown key {key!r} (known: {', '.join(PROFILE_KEYS)})")
        if not isinstance(value, PROFILE_KEYS[key]) or isinstance(value, bool):
            raise ProfileError(f"{where}: {key} has the wrong type ({type(value).__name__})")


def _parse(name: str, raw: dict[str, Any], path: Path, env: Mapping[str, str]) -> Profile:
    where = f"profile file {path}, [profiles.{name}]"
    token = raw.get("token", "")
    if raw.get("token_env"):
        token = env.get(raw["token_env"], "")
        if not token:
            raise ProfileError(f"{where}: token_env names ${raw['token_env']}, which is not set")
    elif token:
        _warn_if_readable(path)
    timeout = float(raw["timeout"]) if "timeout" in raw else None
    return Profile(name, str(raw.get("url", "")), str(token), timeout, f"profile {name!r} ({path})")


def _warn_if_readable(path: Path) -> None:
    """A token in a file others can read is a leaked token; say so (as ssh does for keys)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        print(f"warning: {path} holds a token and is readable by others; chmod 600 it", file=sys.stderr)


def connect(url: str | None, token: str | None, profile: str | None, timeout: float | None,
            env: Mapping[str, str] | None = None) -> ApiClient:
    """Resolve the connection (see the module docstring) into a client; one clear line when the
    URL is missing. The default profile's token is only sent to the default profile's URL, so
    pointing EDGEFLEET_URL elsewhere never leaks it."""
    env = os.environ if env is None else env
    prof = load_profile(profile, env)
    explicit = prof if profile else None
    implicit = prof if not profile else None
    urls = [(url, "--url"), (explicit and explicit.url, "profile"), (env.get("EDGEFLEET_URL"), "env"),
            (implicit and implicit.url, "profile")]
    the_url = next((u for u, _ in urls if u), "")
    if not the_url:
        raise OpsError(f"no fleet URL configured: pass --url, set EDGEFLEET_URL, or add a profile to "
                       f"{profile_path(env)}", BAD_INPUT)
    same_fleet = implicit is not None and implicit.url.rstrip("/") in ("", the_url.rstrip("/"))
    tokens = [(token, "--token"), (explicit and explicit.token, explicit and explicit.source),
              (env.get("EDGEFLEET_TOKEN"), "$EDGEFLEET_TOKEN"),
              (same_fleet and implicit and implicit.token, implicit and implicit.source)]
    the_token, source = next(((t, str(src)) for t, src in tokens if t), ("", ""))
    the_timeout = timeout if timeout is not None else (prof.timeout if prof and prof.timeout else 30.0)
    return ApiClient(the_url, str(the_token), the_timeout, source)
