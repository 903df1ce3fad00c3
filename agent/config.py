"""The agent's configuration: TOML file, then EDGEFLEET_* environment, then command-line flags.

Every check names the field it refused, so an operator can fix a device without reading code.
`AgentConfig.to_toml()` lets tests and the fleet write configs programmatically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agent.private_files import private_dir
from agent.sealed import Sealer, SealError, load_storage_key
from agent.toml_files import read_toml
from agent.transport_policy import InsecureTransportError, check_transport

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The configuration is invalid; the message names the field."""


@dataclass
class MqttConfig:
    url: str = ""  # mqtt://host:1883 or mqtts://host:8883; empty = no broker (local serving only)
    username: str = ""
    password: str = ""  # plaintext: accepted with a warning; `agent enrol` writes password_sealed instead
    password_sealed: str = ""  # "efs1:..." sealed with the storage key (agent.sealed), opened at load
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    protocol: str = "auto"  # auto (MQTT 5, fall back to 3.1.1), "5" or "3.1.1"
    outbox_max_messages: int = 10000
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # drain the outbox only while an ingest worker's retained status says online (agent.mqtt_link);
    # `agent enrol` turns it on, plain-broker setups without an EdgeFleet ingest leave it off
    hold_until_ingest: bool = False


@dataclass
class TelemetryConfig:
    window_s: float = 60.0
    sample_rate: float = 0.1  # share of requests whose inputs feed the drift histograms
    max_samples_per_s: int = 200  # cap on sampled requests per second (bounds the worker's CPU)
    raw_samples: bool = False  # data minimisation: raw inputs never leave the device unless enabled
    raw_samples_per_window: int = 0
    enabled: bool = True
    outcomes: bool = True  # keep request id -> prediction for Agent.feedback (no inputs; docs/telemetry.md)
    outcome_horizon_s: float = 24 * 3600.0
    outcome_max_records: int = 1_000_000
    prediction_records_per_window: int = 100  # sampled (id, prediction, confidence, slice) for the backend join


@dataclass
class ServingConfig:
    unix_socket: str = ""  # path; empty = off
    http_port: int = 0  # 0 = off; always bound to 127.0.0.1
    max_request_bytes: int = 64 * 1024 * 1024


@dataclass
class HealthConfig:
    latency_budget_ms: float = 0.0  # 0 = take it from the device class
    max_error_rate: float = 0.05
    probation_requests: int = 50
    warmup_runs: int = 3


@dataclass
class AgentConfig:
    device_id: str
    state_dir: str
    fleet_id: str = "default"
    device_class: str = "x86-64-generic"
    trusted_keys: list[str] = field(default_factory=list)  # fleet-role public keys (commands, approvals)
    build_keys: list[str] = field(default_factory=list)  # build-role public keys (bundles)
    root_keys: list[str] = field(default_factory=list)  # root-role public keys (sign key lists; pinned at enrol)
    device_key: str = ""  # PEM path; default state_dir/device.key, generated at first start
    fleet_url: str = ""
    fleet_ca_file: str = ""  # CA for https bundle downloads (system store when empty)
    devices_dir: str = ""  # device-class catalogue override
    max_bundle_bytes: int = 2 * 1024**3
    log_level: str = "INFO"
    storage_key: str = ""  # key file; default $CREDENTIALS_DIRECTORY/edgefleet-storage-key, else state_dir/storage.key
    production: bool = False  # refuse plaintext mqtt:// and http:// to remote hosts
    allow_insecure_transport: bool = False  # ... unless explicitly allowed
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def device_key_path(self) -> Path:
        return Path(self.device_key) if self.device_key else self.state_path / "device.key"

    def storage_sealer(self, create: bool = True) -> Sealer:
        """The device's storage key (outbox and config secrets are sealed with it)."""
        if create:
            private_dir(self.state_path)
        return load_storage_key(self.storage_key or None, self.state_path / "storage.key", create=create)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        """TOML text that load_config reads back to an equal config."""
        top: list[str] = []
        sections: list[str] = []
        for key, value in self.to_dict().items():
            if key == "mqtt" and value.get("password_sealed"):
                value.pop("password")  # the opened secret never goes back to disk in plaintext
            if isinstance(value, dict):
                sections.append(f"\n[{key}]")
                sections.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
            else:
                top.append(f"{key} = {_toml_value(value)}")
        return "\n".join(top + sections) + "\n"

    def write(self, path: Path) -> Path:
        Path(path).write_text(self.to_toml())
        return Path(path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


_SECTIONS = {"mqtt": MqttConfig, "telemetry": TelemetryConfig, "serving": ServingConfig, "health": HealthConfig}


def _coerce(name: str, value: Any, typ: Any) -> Any:
    t = typ if isinstance(typ, type) else {"str": str, "int": int, "float": float, "bool": bool,
                                           "list[str]": list}.get(str(typ), str)
    if t is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"field '{name}' must be true or false, got {value!r}")
    if t is int:
        if isinstance(value, bool):
            raise ConfigError(f"field '{name}' must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"field '{name}' must be an integer, got {value!r}") from None
    if t is float:
        if isinstance(value, bool):
            raise ConfigError(f"field '{name}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"field '{name}' must be a number, got {value!r}") from None
    if t is list:
        if isinstance(value, str):
            return [p for p in value.split(",") if p]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"field '{name}' must be a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, str):
        raise ConfigError(f"field '{name}' must be a string, got {value!r}")
    return value


def _build(cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown field(s): {', '.join(prefix + u for u in unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        if name in _SECTIONS and cls is AgentConfig:
            if not isinstance(value, Mapping):
                raise ConfigError(f"field '{name}' must be a table")
            kwargs[name] = _build(_SECTIONS[name], value, f"{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, f.type)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is f.default_factory is None]
        raise ConfigError(f"missing required field(s): {', '.join(prefix + m for m in missing) or exc}") from None


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """EDGEFLEET_DEVICE_ID, EDGEFLEET_STATE_DIR, EDGEFLEET_MQTT__URL (double underscore = section)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("EDGEFLEET_") or key in ("EDGEFLEET_DEVICES", "EDGEFLEET_FAULT_INJECT"):
            continue
        path = key[len("EDGEFLEET_"):].lower().split("__")
        if path[0] == "mqtt_url":  # common shorthand
            path = ["mqtt", "url"]
        if len(path) == 1 and path[0] in {f.name for f in fields(AgentConfig)}:
            out[path[0]] = value
        elif len(path) == 2 and path[0] in _SECTIONS:
            out.setdefault(path[0], {})[path[1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if v is None:
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_config(path: Path | str | None, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> AgentConfig:
    """File < environment < overrides (flags). Raises ConfigError naming the field."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path, ConfigError)
    plaintext_on_disk = isinstance(data.get("mqtt"), Mapping) and bool(data["mqtt"].get("password"))
    data = _merge(data, env_overrides(environ))
    data = _merge(data, overrides or {})
    cfg = _build(AgentConfig, data, "")
    validate(cfg)
    cfg.state_dir = str(Path(cfg.state_dir).expanduser().absolute())  # once, here (issue 11: paths)
    _open_secrets(cfg, plaintext_on_disk)
    return cfg


def _password_purpose(cfg: AgentConfig) -> bytes:
    return f"edgefleet/config\x00mqtt.password\x00{cfg.fleet_id}\x00{cfg.device_id}".encode()


def _open_secrets(cfg: AgentConfig, plaintext_on_disk: bool) -> None:
    if cfg.mqtt.password_sealed:
        if cfg.mqtt.password:
            raise ConfigError("set either 'mqtt.password' or 'mqtt.password_sealed', not both")
        try:
            cfg.mqtt.password = cfg.storage_sealer(create=False).open_text(
                cfg.mqtt.password_sealed, _password_purpose(cfg), "the sealed MQTT password")
        except SealError as exc:
            raise ConfigError(f"field 'mqtt.password_sealed': {exc}") from None
    elif plaintext_on_disk:
        log.warning("event=plaintext-secret field=mqtt.password: the MQTT password is stored in plaintext in the "
                    "config file; `edgefleet agent seal-config --config FILE` stores it sealed "
                    "(mqtt.password_sealed) instead")


def seal_secrets(cfg: AgentConfig) -> AgentConfig:
    """A copy of `cfg` whose MQTT password is sealed with the storage key (created when absent),
    ready for `write()`/`to_toml()`: what `agent enrol` writes."""
    import copy

    out = copy.deepcopy(cfg)
    if out.mqtt.password:
        try:
            out.mqtt.password_sealed = out.storage_sealer().seal_text(out.mqtt.password, _password_purpose(out))
        except SealError as exc:
            raise ConfigError(f"field 'storage_key': {exc}") from None
    return out


def validate(cfg: AgentConfig) -> None:
    import re

    ident = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
    if not ident.match(cfg.device_id):
        raise ConfigError("field 'device_id' must be 1-128 characters of letters, digits, '_', '.', '-'")
    if not ident.match(cfg.fleet_id):
        raise ConfigError("field 'fleet_id' must be 1-128 characters of letters, digits, '_', '.', '-'")
    if not cfg.state_dir:
        raise ConfigError("field 'state_dir' must not be empty")
    for fname in ("trusted_keys", "build_keys", "root_keys"):
        for p in getattr(cfg, fname):
            if not Path(p).is_file():
                raise ConfigError(f"field '{fname}': key file {p} does not exist")
    if cfg.fleet_ca_file and not Path(cfg.fleet_ca_file).is_file():
        raise ConfigError(f"field 'fleet_ca_file': file {cfg.fleet_ca_file} does not exist")
    if cfg.fleet_url and urlparse(cfg.fleet_url).scheme not in ("http", "https"):
        raise ConfigError("field 'fleet_url' must be an http:// or https:// URL")
    if cfg.mqtt.url:
        u = urlparse(cfg.mqtt.url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ConfigError("field 'mqtt.url' must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            u.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ConfigError("field 'mqtt.url' has an invalid port") from None
    if cfg.production:
        try:
            check_transport({"mqtt.url": cfg.mqtt.url, "fleet_url": cfg.fleet_url}, cfg.allow_insecure_transport)
        except InsecureTransportError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.mqtt.protocol not in ("auto", "5", "3.1.1"):
        raise ConfigError("field 'mqtt.protocol' must be auto, 5 or 3.1.1")
    for name in ("ca_file", "cert_file", "key_file"):
        v = getattr(cfg.mqtt, name)
        if v and not Path(v).is_file():
            raise ConfigError(f"field 'mqtt.{name}': file {v} does not exist")
    if cfg.mqtt.outbox_max_messages < 1:
        raise ConfigError("field 'mqtt.outbox_max_messages' must be at least 1")
    if cfg.telemetry.window_s <= 0:
        raise ConfigError("field 'telemetry.window_s' must be positive")
    if not 0.0 <= cfg.telemetry.sample_rate <= 1.0:
        raise ConfigError("field 'telemetry.sample_rate' must be between 0 and 1")
    if cfg.telemetry.max_samples_per_s < 0:
        raise ConfigError("field 'telemetry.max_samples_per_s' must not be negative")
    if cfg.telemetry.outcome_horizon_s <= 0 or cfg.telemetry.outcome_max_records < 1:
        raise ConfigError("fields 'telemetry.outcome_horizon_s' and 'telemetry.outcome_max_records' must be positive")
    if cfg.telemetry.prediction_records_per_window < 0:
        raise ConfigError("field 'telemetry.prediction_records_per_window' must not be negative")
    if cfg.telemetry.raw_samples_per_window < 0:
        raise ConfigError("field 'telemetry.raw_samples_per_window' must not be negative")
    if not 0 <= cfg.serving.http_port <= 65535:
        raise ConfigError("field 'serving.http_port' must be between 0 and 65535")
    if not 0.0 <= cfg.health.max_error_rate <= 1.0:
        raise ConfigError("field 'health.max_error_rate' must be between 0 and 1")
    if cfg.health.latency_budget_ms < 0:
        raise ConfigError("field 'health.latency_budget_ms' must not be negative")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("field 'log_level' must be DEBUG, INFO, WARNING or ERROR")
