"""Enrol this device with a fleet manager: trade a one-time token and the device's public key for
an identity, MQTT credentials and the keys to trust, then write a ready-to-run agent.toml.

Trust: the fleet answers with its signed key list. The device pins the list's root key(s) (or
checks them against `--root-key-id`, learnt out of band) and takes the fleet and build keys from
the list, each in its own role: build keys verify bundles, fleet keys commands. A fleet without
a key list gives only the unsigned fleet and build keys; they keep their roles, but no root is
pinned, so the device refuses every key change until it is enrolled again.

Standard library HTTP only (urllib): the agent stays light. The private key never leaves the device.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, MqttConfig, ServingConfig, seal_secrets
from agent.download import RETRYABLE_HTTP
from agent.identity import load_or_create_device_key
from agent.keylist import KeyListError, verify_first
from agent.keys import public_key_from_b64, public_key_to_b64, public_pem
from agent.model_store import write_atomic
from agent.retry import Backoff

log = logging.getLogger(__name__)


class EnrolError(Exception):
    """Enrolment failed; the message says why (HTTP status and the fleet's error code)."""


@dataclass(frozen=True)
class EnrolRequest:
    fleet_url: str
    token: str
    state_dir: Path
    device_id: str | None = None
    device_class: str | None = None
    attributes: dict[str, Any] | None = None
    tags: list[str] | None = None
    http_port: int = 0
    ca_file: str = ""
    timeout_s: float = 30.0
    retry_s: float = 60.0     # how long transient failures (refused, reset, 5xx, timeouts) are retried
    root_key_ids: tuple[str, ...] = ()  # pinned out of band: the fleet's key list must have exactly these roots


class _Transient(EnrolError):
    """A failure worth retrying: the fleet may answer in a moment (restart, overload, blip)."""


def _post_json_retrying(url: str, body: dict[str, Any], req: EnrolRequest, backoff: Backoff | None = None,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """_post_json with exponential backoff and jitter (agent.retry) for up to `req.retry_s`:
    a device provisioned while the fleet restarts enrols a moment later instead of failing, and a
    batch of devices does not retry in step. Definite answers (4xx, bad TLS, not JSON) are final."""
    delays = (backoff or Backoff(budget_s=req.retry_s)).delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return _post_json(url, body, req.timeout_s, req.ca_file)
        except _Transient as exc:
            delay = next(delays, None) if req.retry_s > 0 else None
            if delay is None:
                raise EnrolError(f"{exc} (after {attempt} attempts)") from None
            log.warning("event=enrol-retry url=%s attempt=%d delay_s=%.2f error=%s", url, attempt, delay, exc)
            sleep(delay)


def _post_json(url: str, body: dict[str, Any], timeout: float, ca_file: str) -> dict[str, Any]:
    import ssl

    ctx = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https:") else None
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read()).get("error", {})
            detail = f"{err.get('code', '')}: {err.get('message', '')}" if isinstance(err, dict) else str(err)
        except ValueError:
            detail = exc.reason
        kind = _Transient if exc.code in RETRYABLE_HTTP else EnrolError
        raise kind(f"fleet refused enrolment (HTTP {exc.code}) {detail}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        kind = EnrolError if isinstance(reason, ssl.SSLError) else _Transient  # a bad certificate stays bad
        raise kind(f"cannot reach fleet at {url}: {reason}") from None
    except ValueError as exc:
        raise EnrolError(f"fleet answered with something that is not JSON: {exc}") from None


def _write_keys(keys_b64: list[str], out_dir: Path, prefix: str) -> list[str]:
    paths = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, b64 in enumerate(keys_b64):
        try:
            pem = public_pem(public_key_from_b64(b64))
        except (ValueError, TypeError) as exc:
            raise EnrolError(f"fleet sent an invalid {prefix} key: {exc}") from None
        path = out_dir / f"{prefix}-{i}.pub"
        write_atomic(path, pem)
        paths.append(str(path))
    return paths


def enrol(req: EnrolRequest) -> AgentConfig:
    """POST /api/enrol and return the agent configuration it implies (not yet written)."""
    state = Path(req.state_dir)
    key_path = state / "device.key"
    key = load_or_create_device_key(key_path)
    body: dict[str, Any] = {"token": req.token, "public_key": public_key_to_b64(key.public_key())}
    for name in ("device_id", "device_class", "attributes", "tags"):
        if getattr(req, name):
            body[name] = getattr(req, name)
    res = _post_json_retrying(req.fleet_url.rstrip("/") + "/api/enrol", body, req)
    try:
        device, mqtt = res["device"], res["mqtt"]
        by_role = {"fleet": list(res["fleet_keys"]), "build": list(res.get("build_keys") or []), "root": []}
    except (KeyError, TypeError) as exc:
        raise EnrolError(f"fleet's enrolment answer lacks {exc}") from None
    keylist = res.get("keylist")
    if keylist is not None:
        try:
            kl = verify_first(keylist, req.root_key_ids or None)
        except KeyListError as exc:
            raise EnrolError(f"the fleet's key list is not trusted: {exc}") from None
        by_role = {r: [public_key_to_b64(k) for _, k in sorted(kl.keys.role(r).keys.items())]
                   for r in ("fleet", "build", "root")}
    elif req.root_key_ids:
        raise EnrolError("--root-key-id given but the fleet has no signed key list (upload one:"
                         " `edgefleet keys sign-keylist`)")
    paths = {r: _write_keys(keys, state / "trust", r) for r, keys in by_role.items()}
    _pin(state, paths, keylist)
    return AgentConfig(
        device_id=res["device_id"], state_dir=str(state), fleet_id=res["fleet"],
        device_class=device.get("device_class") or req.device_class or "x86-64-generic",
        trusted_keys=paths["fleet"], build_keys=paths["build"], root_keys=paths["root"],
        device_key=str(key_path), fleet_url=req.fleet_url.rstrip("/"),
        fleet_ca_file=req.ca_file,
        mqtt=MqttConfig(url=mqtt["url"], username=mqtt.get("username", ""), password=mqtt.get("password", ""),
                        hold_until_ingest=True),  # an EdgeFleet ingest announces itself
        serving=ServingConfig(http_port=req.http_port))


def _pin(state: Path, paths: dict[str, list[str]], keylist: dict[str, Any] | None) -> None:
    """Start the device's keyring afresh from what this enrolment pinned (re-enrolment resets
    trust), and record the signed key list so later lists must have a higher version."""
    from agent.keys import KeyFileError
    from agent.trust import TrustStore

    for stale in (state / "trust").glob("*.pub"):
        if str(stale) not in {p for ps in paths.values() for p in ps}:
            stale.unlink()
    (state / "keyring.json").unlink(missing_ok=True)
    try:
        ts = TrustStore(state, root_keys=paths["root"], fleet_keys=paths["fleet"], build_keys=paths["build"])
        if keylist is not None:
            ts.apply_keylist(keylist)
    except (KeyFileError, KeyListError) as exc:
        raise EnrolError(f"cannot pin the fleet's keys: {exc}") from None


def write_config(cfg: AgentConfig, path: Path) -> Path:
    """Written 0600, with the MQTT password sealed under the device's storage key (agent.sealed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), seal_secrets(cfg).to_toml().encode())
    Path(path).chmod(0o600)
    return Path(path)
