"""Enrol this device with a fleet manager: trade a one-time token and the device's public key for
an identity, MQTT credentials and the keys to trust, then write a ready-to-run agent.toml.

Standard library HTTP only (urllib): the agent stays light. The private key never leaves the device.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, MqttConfig, ServingConfig, seal_secrets
from agent.identity import load_or_create_device_key
from agent.keys import public_key_from_b64, public_key_to_b64, public_pem
from agent.model_store import write_atomic


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
        raise EnrolError(f"fleet refused enrolment (HTTP {exc.code}) {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrolError(f"cannot reach fleet at {url}: {getattr(exc, 'reason', exc)}") from None
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
    res = _post_json(req.fleet_url.rstrip("/") + "/api/enrol", body, req.timeout_s, req.ca_file)
    try:
        device, mqtt = res["device"], res["mqtt"]
        fleet_keys = list(res["fleet_keys"])
    except (KeyError, TypeError) as exc:
        raise EnrolError(f"fleet's enrolment answer lacks {exc}") from None
    trusted = _write_keys(fleet_keys, state / "trust", "fleet") + _write_keys(
        list(res.get("build_keys", [])), state / "trust", "build")
    return AgentConfig(
        device_id=res["device_id"], state_dir=str(state), fleet_id=res["fleet"],
        device_class=device.get("device_class") or req.device_class or "x86-64-generic",
        trusted_keys=trusted, device_key=str(key_path), fleet_url=req.fleet_url.rstrip("/"),
        fleet_ca_file=req.ca_file,
        mqtt=MqttConfig(url=mqtt["url"], username=mqtt.get("username", ""), password=mqtt.get("password", "")),
        serving=ServingConfig(http_port=req.http_port))


def write_config(cfg: AgentConfig, path: Path) -> Path:
    """Written 0600, with the MQTT password sealed under the device's storage key (agent.sealed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), seal_secrets(cfg).to_toml().encode())
    Path(path).chmod(0o600)
    return Path(path)
