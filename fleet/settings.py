"""Fleet settings: defaults, then a TOML file, then environment variables, then flags (highest).

Every fleet command reads them through `load_settings`, so `serve`, `db upgrade` and
`enrol-token create` cannot disagree about the database. Paths are made absolute here, once,
against the directory the command runs in: nothing later resolves a relative path against
another folder (Flask's `send_file` would take the package folder).
"""

from __future__ import annotations

import os
import secrets
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.toml_files import read_toml


@dataclass
class DriftSettings:
    psi_warn: float = 0.1
    psi_alert: float = 0.2
    js_warn: float | None = None      # optional extra triggers on the Jensen-Shannon distance
    js_alert: float | None = None
    min_samples: int = 1000          # fewer current samples: "insufficient", never an alarm
    min_reference_samples: int = 100  # a smaller reference is not trusted either (baselines are often ~500)
    dataset_drift_share: float = 0.5  # dataset drift when this share of the top features drift
    top_features: int | None = None   # None: every feature of the baseline
    eps: float = 1e-4


@dataclass
class RetrainSettings:
    """When persistent drift opens a retraining request; a human approves it before anything runs."""

    min_alert_windows: int = 3        # distinct telemetry windows with a baseline alert for the version
    min_cohort_share: float = 0.5     # share of the version's reporting cohorts that alerted
    lookback_s: float = 6 * 3600.0
    webhook_url: str = ""             # POSTed on approval (e.g. your CI's retraining job); empty: none
    webhook_token: str = ""           # sent as "Authorization: Bearer ..." when set
    webhook_timeout_s: float = 10.0


@dataclass
class IngestSettings:
    shared_group: str = "edgefleet-ingest"
    use_shared: bool = True        # $share/... when the broker speaks MQTT 5
    queue_size: int = 20000        # bounded queue between the paho thread and the writer
    batch_size: int = 500
    batch_wait_s: float = 0.05
    verify_threads: int = 2        # threads checking a batch's signatures (Ed25519 runs without the GIL)
    device_cache_s: float = 2.0    # how long a device's key/status is cached (decommission latency)
    retention_days: float = 14.0
    session_expiry_s: int = 0      # >0: persistent MQTT session, the broker queues while ingest restarts
    name: str = ""                 # client id edgefleet-ingest-<name>; one per ingest process ("" = fleet-host)
    verify: str = "all"            # "all" signatures, or "sample": telemetry sampled, state/events all (docs/security.md)
    sample_rate: float = 0.05      # share of telemetry windows verified when verify = "sample"
    # "paho": every packet through paho's parser; "batched": QoS 1 PUBLISHes cut out of each read and
    # handed on as one batch, with a 200 ms pause after a trickle (about 8x less receive CPU, docs/deploy.md)
    receive: str = "paho"

    def __post_init__(self) -> None:
        if self.receive not in ("paho", "batched"):
            raise SettingsError(f"fleet setting 'ingest.receive' must be \"paho\" or \"batched\", not {self.receive!r}")
        if self.verify not in ("all", "sample"):
            raise SettingsError(f"fleet setting 'ingest.verify' must be \"all\" or \"sample\", not {self.verify!r}")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise SettingsError(f"fleet setting 'ingest.sample_rate' must be between 0 and 1, not {self.sample_rate}")


@dataclass
class LifecycleSettings:
    """Model governance and data retention (issue 16, fleet.catalogue.reviews, fleet.ingest.retention); run by
    `serve` every housekeeping_interval_s. Retention in days by age; 0 keeps forever. Raw
    per-device windows follow ingest.retention_days."""

    housekeeping_interval_s: float = 3600.0
    review_interval_days: int = 90       # a model's default review cadence (its owner may change it)
    aggregate_retention_days: float = 400.0
    event_retention_days: float = 365.0
    audit_retention_days: float = 0.0    # the audit log is kept forever unless your policy says otherwise
    require_owner: bool = False          # a new model needs an owner at upload (always under --production)


@dataclass
class AnalyticsSettings:
    """Thresholds of the online-quality alerts (fleet.analytics.alerts, issue 14), per model version
    over `lookback_s`, at most once per `bucket_s`. Env: EDGEFLEET_ANALYTICS_<NAME> (e.g.
    EDGEFLEET_ANALYTICS_MIN_LABELLED=500) overrides the file."""

    bucket_s: float = 3600.0                  # one alert per version, kind and bucket
    lookback_s: float = 6 * 3600.0            # windows (and joined labels) judged
    reference_s: float = 24 * 3600.0          # low-confidence rate of this span before is the reference
    min_labelled: int = 200                   # fewer labels: "insufficient", never a concept alert
    accuracy_margin: float = 0.02             # concept drift: online accuracy this far below the build/control
    alpha: float = 0.01                       # one-sided significance of the concept and confidence tests
    max_slice_gap_increase: float = 0.05      # worst-slice gap over the build-time gap by more: alert
    max_low_confidence_increase: float = 0.1  # low-confidence rate over the day before by more: warn

    def __post_init__(self) -> None:
        for name in ("bucket_s", "lookback_s", "reference_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"fleet setting 'analytics.{name}' must be positive, not {getattr(self, name)}")
        if self.min_labelled < 1:
            raise SettingsError(f"fleet setting 'analytics.min_labelled' must be at least 1, not {self.min_labelled}")
        if not 0.0 < self.alpha < 0.5:
            raise SettingsError(f"fleet setting 'analytics.alpha' must be between 0 and 0.5, not {self.alpha}")
        for name in ("accuracy_margin", "max_slice_gap_increase", "max_low_confidence_increase"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SettingsError(f"fleet setting 'analytics.{name}' must be between 0 and 1, "
                                    f"not {getattr(self, name)}")


@dataclass
class FleetSettings:
    data_dir: Path = Path(".edgefleet/fleet")
    database_url: str | None = None       # None: SQLite file data_dir/fleet.db
    database_read_url: str | None = None  # a PostgreSQL read replica for dashboard reads; None: database_url
    mqtt_url: str | None = None           # mqtt://host:port; None: 127.0.0.1:1883 if reachable else embedded
    mqtt_ca_file: str = ""                # CA bundle for an mqtts:// mqtt_url (system store when empty)
    device_mqtt_url: str | None = None    # what devices are told at enrolment (e.g. mqtts://broker:8883); None: mqtt_url
    fleet_id: str = "default"
    signing_key_path: Path | None = None  # fleet command key; None: data_dir/keys/fleet.key (created)
    storage_key_file: Path | None = None  # seals the artifact store; None: systemd credential, else data_dir/keys/storage.key
    allow_insecure_transport: bool = False  # `serve --production`: allow mqtt:// and http:// to remote hosts
    trusted_build_keys: list[Path] = field(default_factory=list)  # public keys that sign bundles
    api_tokens: dict[str, str] = field(default_factory=dict)      # bootstrap: token -> role
    secret_key: str = ""                  # cookie sessions; random per start when empty
    public_url: str = "http://127.0.0.1:8080"  # how agents reach /artifacts
    max_upload_bytes: int = 2 * 1024**3   # largest bundle POST /api/models accepts (413 beyond); streamed to disk
    host: str = "127.0.0.1"
    port: int = 8080
    start_ingest: bool = True             # `serve` runs the ingest subscriber in-process
    embedded_broker: bool = True          # start one when no broker is configured or reachable
    start_rollouts: bool = True           # `serve` runs the rollout evaluator (fleet.rollouts) in-process
    rollout_interval_s: float = 1.0
    cohort_keys: list[str] = field(default_factory=lambda: ["region"])
    drift_interval_s: float = 60.0        # how often `serve` evaluates drift and raises alerts
    drift: DriftSettings = field(default_factory=DriftSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    analytics: AnalyticsSettings = field(default_factory=AnalyticsSettings)

    def __post_init__(self) -> None:
        self.data_dir = absolute(self.data_dir)
        if self.signing_key_path is not None:
            self.signing_key_path = absolute(self.signing_key_path)
        if self.storage_key_file is not None:
            self.storage_key_file = absolute(self.storage_key_file)
        self.trusted_build_keys = [absolute(p) for p in self.trusted_build_keys]
        self.database_url = normalize_database_url(self.database_url)
        self.database_read_url = normalize_database_url(self.database_read_url)
        if self.database_read_url and not (self.database_url or "").startswith("postgresql"):
            raise SettingsError("fleet setting 'database_read_url' (a read replica) needs database_url to be "
                                "PostgreSQL too")
        if not self.secret_key:
            self.secret_key = secrets.token_hex(32)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def database_label(self) -> str:
        """Which database, for humans: the URL with its password masked, or the SQLite file."""
        return _redact_url(self.database_url) or f"sqlite:///{self.data_dir / 'fleet.db'} (SQLite, the default)"

    def describe(self) -> str:
        return f"fleet {self.fleet_id!r}, database {self.database_label}, data {self.data_dir}"

    def __repr__(self) -> str:  # never print tokens or the session secret
        return (f"FleetSettings(data_dir={str(self.data_dir)!r}, database={_redact_url(self.database_url)!r}, "
                f"mqtt_url={_redact_url(self.mqtt_url)!r}, fleet_id={self.fleet_id!r})")


def absolute(path: Path | str) -> Path:
    """`~` expanded and anchored at the current directory (not resolved: symlinks stay as given)."""
    return Path(path).expanduser().absolute()


# Scheme aliases operators are handed (Heroku, Render, docker images) -> the driver EdgeFleet ships.
DATABASE_SCHEMES = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg"}


def normalize_database_url(url: str | None) -> str | None:
    """`postgres://` and `postgresql://` mean PostgreSQL through psycopg 3 (the driver installed)."""
    if not url or "://" not in url:
        return url or None
    scheme, rest = url.split("://", 1)
    scheme = DATABASE_SCHEMES.get(scheme.lower(), scheme)
    if not scheme.startswith(("postgresql", "sqlite")):
        raise SettingsError(f"database URL scheme {scheme!r} is not supported: use "
                            "postgresql://USER:PASSWORD@HOST:5432/DB (or postgres://) or sqlite:///PATH")
    return f"{scheme}://{rest}"


def _redact_url(url: str | None) -> str | None:
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def parse_tokens(text: str) -> dict[str, str]:
    """'admin:TOKEN,viewer:OTHER' -> {TOKEN: 'admin', OTHER: 'viewer'}."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, _, token = part.partition(":")
        if not token:
            raise SettingsError("EDGEFLEET_API_TOKENS entries look like ROLE:TOKEN")
        out[token] = role
    return out


class SettingsError(ValueError):
    """A fleet setting is unknown, of the wrong type, or its file unreadable; the message names it."""


def _accepts(hint: Any, value: Any) -> bool:
    """Does `value` (as TOML, env or a flag gives it) fit the field's type hint?"""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Path:
        return isinstance(value, (str, Path))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """`obj` with `data` applied; the dataclass is the schema (names and types checked)."""
    if not isinstance(data, dict):
        raise SettingsError(f"fleet setting {prefix.rstrip('.') or 'fleet'!r} must be a table")
    hints = typing.get_type_hints(type(obj))
    updates: dict[str, Any] = {}
    for key, value in data.items():
        if key not in hints or key not in {f.name for f in fields(obj)}:
            raise SettingsError(f"unknown fleet setting {prefix + key!r}")
        current = getattr(obj, key)
        if isinstance(current, (DriftSettings, IngestSettings, RetrainSettings, LifecycleSettings,
                                AnalyticsSettings)):
            updates[key] = _apply(current, value, f"{prefix}{key}.")
            continue
        if not _accepts(hints[key], value):
            raise SettingsError(f"fleet setting {prefix + key!r} must be {_type_name(hints[key])}, not {value!r}")
        if key in ("data_dir", "signing_key_path", "storage_key_file") and value is not None:
            value = Path(value)
        elif key == "trusted_build_keys":
            value = [Path(v) for v in value]
        updates[key] = value
    return replace(obj, **updates)


def _type_name(hint: Any) -> str:
    return str(hint).replace("pathlib.", "").replace("typing.", "").replace("<class '", "").replace("'>", "")


def _section_env(env: dict[str, str], prefix: str, section: Any) -> dict[str, Any]:
    """PREFIX<FIELD> variables of one settings section, parsed by the field's type (a bad number
    is a SettingsError naming the variable)."""
    out: dict[str, Any] = {}
    for f in fields(section):
        raw = env.get(prefix + f.name.upper())
        if not raw:
            continue
        kind = int if isinstance(getattr(section, f.name), int) else float
        try:
            out[f.name] = kind(raw)
        except ValueError:
            raise SettingsError(f"{prefix + f.name.upper()}={raw!r} must be {kind.__name__}") from None
    return out


def config_path(path: Path | str | None, env: dict[str, str]) -> Path | None:
    """The fleet.toml in use: --config, else $EDGEFLEET_CONFIG, else $EDGEFLEET_FLEET_CONFIG, else none."""
    chosen = path or env.get("EDGEFLEET_CONFIG") or env.get("EDGEFLEET_FLEET_CONFIG")
    return absolute(chosen) if chosen else None


def load_settings(path: Path | str | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> FleetSettings:
    """Settings from `path` (TOML, optional [fleet] table), then env, then keyword overrides.

    Without `path` the file named by EDGEFLEET_CONFIG (or the older EDGEFLEET_FLEET_CONFIG) is read.
    """
    env = dict(os.environ if env is None else env)
    s = FleetSettings()
    path = config_path(path, env)
    if path:
        data = read_toml(path, SettingsError, "fleet settings")
        s = _apply(s, data.get("fleet", data))
    mapping = {"DATABASE_URL": "database_url", "DATABASE_READ_URL": "database_read_url", "MQTT_URL": "mqtt_url", "EDGEFLEET_FLEET_DATA": "data_dir",
               "EDGEFLEET_FLEET_ID": "fleet_id", "EDGEFLEET_SIGNING_KEY": "signing_key_path",
               "EDGEFLEET_PUBLIC_URL": "public_url", "EDGEFLEET_SECRET_KEY": "secret_key",
               "EDGEFLEET_DEVICE_MQTT_URL": "device_mqtt_url", "EDGEFLEET_MQTT_CA_FILE": "mqtt_ca_file",
               "EDGEFLEET_STORAGE_KEY_FILE": "storage_key_file"}
    env_updates: dict[str, Any] = {attr: env[var] for var, attr in mapping.items() if env.get(var)}
    if env.get("EDGEFLEET_TRUSTED_BUILD_KEYS"):
        env_updates["trusted_build_keys"] = [p for p in env["EDGEFLEET_TRUSTED_BUILD_KEYS"].split(os.pathsep) if p]
    if env.get("EDGEFLEET_API_TOKENS"):
        env_updates["api_tokens"] = {**s.api_tokens, **parse_tokens(env["EDGEFLEET_API_TOKENS"])}
    s = _apply(s, env_updates)
    analytics_env = _section_env(env, "EDGEFLEET_ANALYTICS_", s.analytics)
    if analytics_env:
        s = _apply(s, {"analytics": analytics_env})
    return _apply(s, overrides) if overrides else s
