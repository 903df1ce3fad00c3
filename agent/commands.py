"""Fleet commands received over MQTT: checked by agent.protocol.CommandGuard (signature by a
key of the FLEET role, addressed to this device, sequence strictly increasing and persisted, not
expired), then executed one at a time on a worker thread (downloads never block MQTT).
Refusals are reported as `command-refused` events; every outcome of a command that verified as
the fleet's updates `last_command` in the retained state. A message that does not verify (bad or
missing signature, a non-fleet key) never does: it could carry any real command id.

Key roles: commands and rollback approvals verify only against fleet keys, bundles only against
build keys (agent.lifecycle). `rotate-key` changes nothing by itself: it carries a signed key
list that must pass agent.keylist.verify_update (root, or a threshold of fleet keys, and a
higher version), so neither a build key nor one stolen fleet key can add a key.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.bundle import RollbackApproval
from agent.canonical import canonical_json
from agent.config import AgentConfig
from agent.download import DownloadError, download
from agent.interfaces import Reporter, TelemetryControl
from agent.keylist import KeyListError
from agent.keys import SignatureError
from agent.lifecycle import InstallError, Lifecycle
from agent.model_store import write_atomic
from agent.protocol import CommandGuard, ProtocolError, decode
from agent.trust import TrustStore

if TYPE_CHECKING:
    from agent.explain import ExplainRequests

log = logging.getLogger(__name__)


class CommandHandler:
    """Checks, queues and runs the fleet's commands. Typed collaborators: the trust store (fleet
    keys check commands), the Lifecycle (installs), a Reporter (events, state changes), the
    TelemetryControl (`telemetry-config`) and ExplainRequests (`explain`, when served)."""

    def __init__(self, cfg: AgentConfig, keys: TrustStore, lifecycle: Lifecycle, report: Reporter,
                 telemetry: TelemetryControl, explain: ExplainRequests | None = None) -> None:
        self.state_path = cfg.state_path / "commands.json"
        self.downloads = cfg.state_path / "downloads"
        self.keys = keys
        self.lifecycle = lifecycle
        self.report = report
        self.telemetry = telemetry
        self.explain = explain
        self.max_bundle_bytes = cfg.max_bundle_bytes
        self.fleet_url = cfg.fleet_url
        self.fleet_ca_file = cfg.fleet_ca_file
        saved = self._load()
        self.guard = CommandGuard(cfg.device_id, keys.fleet, int(saved.get("last_seq", 0)))
        self.last_command: dict[str, Any] | None = saved.get("last_command")
        # answers by command id: a copy of a command already accepted (re-published after a fleet
        # restart, redelivered by MQTT) is answered with the original's result, never a refusal
        self._answers: dict[str, dict[str, Any]] = {}
        if self.last_command and self.last_command.get("id"):
            self._answers[self.last_command["id"]] = self.last_command
        self.unverified_count = 0  # refused messages that did not verify (agent._refuse_unverified)
        self.last_unverified: dict[str, Any] | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=64)
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._thread = threading.Thread(target=self._worker, name="commands", daemon=True)
        self._thread.start()

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        with self._save_lock:
            write_atomic(self.state_path, canonical_json({"last_seq": self.guard.last_seq,
                                                          "last_command": self.last_command}))

    def record(self, payload: dict[str, Any] | None, result: str, reason: str | None) -> None:
        """A command's outcome: the signed `last_command`, persisted, and the state republished."""
        self.last_command = {"id": (payload or {}).get("id"), "kind": (payload or {}).get("kind"),
                             "result": result, "reason": reason}
        self._remember(self.last_command)
        self._save()
        self.report.changed()

    # -- receive (MQTT thread) ----------------------------------------------------------------
    def receive(self, raw: bytes) -> None:
        """Check a command; accepted ones are queued for the worker, refused ones reported."""
        payload: dict[str, Any] | None = None
        doc: Any = None
        try:
            doc = decode(raw)
            with self._lock:
                payload = self.guard.check(doc)
                self._save()  # persist last_seq before acting: a replay after a crash is refused
        except ProtocolError as exc:
            inner = doc.get("payload") if isinstance(doc, dict) else None
            cid = inner.get("id") if isinstance(inner, dict) and isinstance(inner.get("id"), str) else None
            if doc is None or isinstance(exc.__cause__, SignatureError):
                self._refuse_unverified(exc, cid, inner)
                return
            if exc.reason == "stale" and cid in self._answers:
                original = self._answers[cid]
                log.info("event=command-duplicate id=%s result=%s", cid, original.get("result"))
                self.report.emit_event("command-duplicate", command_id=cid, reason=original.get("reason"),
                                       details={"duplicate": True, "result": original.get("result"), "code": "stale"})
                return
            log.warning("event=command-refused reason=%s id=%s", exc.reason, cid)
            self.report.emit_event("command-refused", command_id=cid, reason=str(exc), details={"code": exc.reason})
            self.last_command = {"id": cid, "kind": inner.get("kind") if isinstance(inner, dict) else None,
                                 "result": "refused", "reason": exc.reason}
            self._save()
            self.report.changed()
            return
        log.info("event=command-accepted id=%s kind=%s seq=%s", payload["id"], payload["kind"], payload["seq"])
        self._remember({"id": payload["id"], "kind": payload["kind"], "result": "accepted", "reason": None})
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.record(payload, "failed", "command queue full")

    def _refuse_unverified(self, exc: ProtocolError, cid: str | None, inner: Any) -> None:
        """A message that did not verify as the fleet's (bad or missing signature, a key outside
        the fleet role, not even an envelope) says nothing about the command id it claims: anyone
        who can publish on our topic could reuse a real id. So it never touches the signed
        `last_command` nor the answers by id; it is logged, counted, kept apart as
        `refused_unverified` and reported as a `command-refused` event marked unverified, which the
        fleet treats as an attack or corruption signal, never as our answer to its command."""
        cause = exc.__cause__
        signature = "untrusted-key" if isinstance(cause, SignatureError) and cause.reason == "unknown-key" else \
            (cause.reason if isinstance(cause, SignatureError) else exc.reason)
        kind = inner.get("kind") if isinstance(inner, dict) and isinstance(inner.get("kind"), str) else None
        log.warning("event=command-refused reason=%s signature=%s id=%s unverified=true", exc.reason, signature, cid)
        with self._lock:
            self.unverified_count += 1
            self.last_unverified = {"id": cid, "kind": kind, "result": "refused", "reason": exc.reason,
                                    "signature": signature, "at": round(time.time(), 3)}
        self.report.emit_event("command-refused", command_id=cid, reason=str(exc),
                               details={"code": exc.reason, "signature": signature, "unverified": True})

    def refused_unverified(self) -> dict[str, Any]:
        """For state and health: how many unverified commands were refused, and the last one."""
        return {"count": self.unverified_count, "last": self.last_unverified}

    def _remember(self, answer: dict[str, Any]) -> None:
        if answer.get("id"):
            self._answers.pop(answer["id"], None)
            self._answers[answer["id"]] = answer
            while len(self._answers) > 64:
                self._answers.pop(next(iter(self._answers)))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # -- execute (worker thread) --------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            try:
                self.execute(payload)
            except Exception as exc:  # a bug in one command must not stop the worker
                log.exception("event=command-crashed id=%s", payload.get("id"))
                try:
                    self.record(payload, "failed", f"internal error: {exc}")
                except OSError as again:  # e.g. a full disk: the answer is lost, the worker lives on
                    log.error("event=command-result-not-saved id=%s error=%s", payload.get("id"), again)

    def fetch(self, model: dict[str, Any]) -> Path:
        """Download the bundle a command names (url relative to fleet_url, size, SHA-256) into downloads/."""
        for field in ("url", "bundle_sha256"):
            if not isinstance(model.get(field), str):
                raise InstallError("malformed", f"command model lacks '{field}'")
        sha = model["bundle_sha256"]
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):  # it names a file: no paths
            raise InstallError("malformed", "command model bundle_sha256 is not a lower-case SHA-256 hex digest")
        dest = self.downloads / f"{sha}.bundle"
        size = model.get("size")
        url = model["url"]
        if not url.startswith(("http://", "https://")):
            if not self.fleet_url:
                raise InstallError("malformed", f"relative bundle URL {url!r} and no fleet_url configured")
            from urllib.parse import urljoin

            url = urljoin(self.fleet_url.rstrip("/") + "/", url.lstrip("/"))
        try:
            return download(url, dest, expected_size=size if isinstance(size, int) else None,
                            expected_sha256=model["bundle_sha256"], max_bytes=self.max_bundle_bytes,
                            ca_file=self.fleet_ca_file)
        except DownloadError as exc:
            raise InstallError("download-failed", str(exc)) from exc

    def _cleanup_downloads(self, keep: Path | None = None) -> None:
        if not self.downloads.exists():
            return
        for p in self.downloads.glob("*.bundle"):
            if p != keep:
                p.unlink(missing_ok=True)

    def execute(self, p: dict[str, Any]) -> None:
        """Run one accepted command through its kind's handler (_KINDS) and record the answer."""
        run = _KINDS.get(p["kind"])
        if run is None:
            return
        try:
            run(self, p)
        except InstallError as exc:
            if exc.reason in ("download-failed", "malformed", "announced-mismatch"):
                self.report.emit_event("install-failed", command_id=p["id"], reason=str(exc),
                                                    details={"code": exc.reason})
            self.record(p, "refused" if exc.reason in _REFUSALS else "failed", str(exc))
        except (ValueError, TypeError) as exc:
            self.record(p, "failed", str(exc))

    def _install(self, p: dict[str, Any]) -> None:
        lc, cid = self.lifecycle, p["id"]
        model = p.get("model") or {}
        cand = lc.predictor.candidate
        active = lc.predictor.active
        if active is not None and active.installed.manifest_sha256 == model.get("manifest_sha256"):
            self.record(p, "ok", "already active")
            return
        if cand is not None and cand.model.installed.manifest_sha256 == model.get("manifest_sha256"):
            lc.activate(cand.model, command_id=cid)  # promote the running candidate
        else:
            path = self.fetch(model)
            self._check_announced(path, model)
            lc.install(path, command_id=cid, allow_new_name=True)  # the signed command names it
            self._cleanup_downloads()
        self.record(p, "ok", None)

    def _candidate(self, p: dict[str, Any]) -> None:
        """`shadow` (a `fraction` of requests re-run off the path) or `ab` (a `share` served)."""
        kind, model = p["kind"], p.get("model") or {}
        field = "fraction" if kind == "shadow" else "share"
        share = p.get(field)
        if not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise InstallError("malformed", f"'{field}' must be in [0, 1]")
        path = self.fetch(model)
        self._check_announced(path, model)
        self.lifecycle.set_candidate(path, kind, float(share), command_id=p["id"], allow_new_name=True)
        self.record(p, "ok", None)

    def _stop_candidate(self, p: dict[str, Any]) -> None:
        self.lifecycle.stop_candidate()
        self.record(p, "ok", None)

    def _uninstall(self, p: dict[str, Any]) -> None:
        """Decommission (issue 16): agent.uninstall."""
        from agent.uninstall import uninstall

        model = p.get("model") or {}
        uninstall(self.lifecycle, model.get("name"), model.get("version"), command_id=p["id"])
        self.record(p, "ok", None)

    def _benchmark(self, p: dict[str, Any]) -> None:
        """Run a compiler candidate, install nothing (agent.benchmark)."""
        from agent.benchmark import execute as benchmark

        benchmark(self, p)

    def _explain(self, p: dict[str, Any]) -> None:
        """Explain the next sampled requests (issue 15): agent.explain."""
        from agent.explain import arm_command

        arm_command(self.explain, p)
        self.record(p, "ok", None)

    def _telemetry_config(self, p: dict[str, Any]) -> None:
        w, r = p.get("window_s"), p.get("sample_rate")
        if (w is not None and (not isinstance(w, (int, float)) or w <= 0)) or \
                (r is not None and (not isinstance(r, (int, float)) or not 0 <= r <= 1)):
            raise InstallError("malformed", "window_s must be > 0 and sample_rate in [0, 1]")
        self.telemetry.set_telemetry_config(w, r)
        self.record(p, "ok", None)

    def _apply_keylist(self, p: dict[str, Any]) -> None:
        doc = p.get("keylist")
        try:
            if not isinstance(doc, dict):
                raise KeyListError("unsigned-rotation", "rotate-key must carry a signed key list ('keylist'); a bare"
                                                        " new_key is no longer accepted")
            new = self.keys.apply_keylist(doc)
        except KeyListError as exc:
            log.warning("event=keylist-refused id=%s reason=%s", p["id"], exc)
            self.report.emit_event("command-refused", command_id=p["id"], reason=str(exc),
                                   details={"code": f"keylist-{exc.reason}"})
            raise InstallError("keylist-refused", str(exc)) from exc
        self.report.emit_event("keylist-accepted", command_id=p["id"], reason=None,
                               details={"version": new.version, "fleet": self.keys.ids("fleet"),
                                        "build": self.keys.ids("build"), "root": self.keys.ids("root")})
        self.record(p, "ok", None)

    def _check_announced(self, path: Path, model: dict[str, Any]) -> None:
        from agent.bundle import read_manifest_unverified

        m = read_manifest_unverified(path).get("model", {})
        if m.get("name") != model.get("name") or m.get("version") != model.get("version"):
            raise InstallError("announced-mismatch", f"bundle is {m.get('name')} v{m.get('version')}, the command"
                                                     f" announced {model.get('name')} v{model.get('version')}")

    def _rollback(self, p: dict[str, Any]) -> None:
        lc = self.lifecycle
        model = p.get("model") or {}
        approval_doc = p.get("rollback_approval")
        if not isinstance(approval_doc, dict):
            self.report.emit_event("command-refused", command_id=p["id"],
                                   reason="rollback command carries no rollback_approval", details={"code": "downgrade"})
            raise InstallError("downgrade", "rollback command carries no rollback_approval")
        approval = RollbackApproval(approval_doc)
        prev = lc.predictor.previous
        if prev is not None and prev.installed.manifest_sha256 == model.get("manifest_sha256"):
            from agent.bundle import BundleError

            try:
                approval.check(self.keys.fleet, prev.manifest, prev.installed.manifest_sha256)
            except BundleError as exc:
                self.report.emit_event("command-refused", command_id=p["id"], reason=str(exc),
                                       details={"code": exc.reason})
                raise InstallError("downgrade", str(exc)) from exc
            lc.rollback_to_previous(f"fleet rollback to version {prev.version}", command_id=p["id"], local=False)
            self.report.emit_event("install-ok", command_id=p["id"], reason=None,
                                   details={"name": prev.installed.name, "version": prev.version, "rollback": True})
            self.record(p, "rolled-back", None)
            return
        path = self.fetch(model)
        self._check_announced(path, model)
        lc.install(path, approval=approval, command_id=p["id"], allow_new_name=True)
        self.record(p, "rolled-back", None)


_REFUSALS = {"no-signature", "unknown-key", "bad-signature", "hash-mismatch", "size-mismatch", "extra-file",
             "missing-file", "unsafe-path", "too-large", "downgrade", "malformed", "announced-mismatch",
             "keylist-refused", "new-name"}


# What each command kind runs (the kinds themselves are checked by agent.protocol.CommandGuard).
_KINDS: dict[str, Callable[[CommandHandler, dict[str, Any]], None]] = {
    "install": CommandHandler._install,
    "rollback": CommandHandler._rollback,
    "shadow": CommandHandler._candidate,
    "ab": CommandHandler._candidate,
    "stop-candidate": CommandHandler._stop_candidate,
    "uninstall": CommandHandler._uninstall,
    "rotate-key": CommandHandler._apply_keylist,
    "benchmark": CommandHandler._benchmark,
    "explain": CommandHandler._explain,
    "telemetry-config": CommandHandler._telemetry_config,
}
