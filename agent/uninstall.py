"""Decommission a model on the device (issue 16): the fleet-signed `uninstall` command names a
model (and optionally one version). The agent unloads it wherever it runs (active, previous,
shadow/A-B candidate), deletes its unpacked files and manifests, keeps serving any other model
it holds, and reports an `uninstalled` event. The anti-rollback floor stays: an old version of
the name cannot come back later without a signed rollback approval.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

from agent.lifecycle import InstallError, Lifecycle
from agent.names import InvalidName, validate_name

log = logging.getLogger(__name__)


def _matches(inst: Any, name: str, version: int | None) -> bool:
    return inst is not None and inst.name == name and (version is None or inst.version == version)


def uninstall(lc: Lifecycle, name: Any, version: Any, command_id: str | None = None) -> dict[str, Any]:
    """Remove `name` (every version, or just `version`) from the device. Returns what was removed
    and what the device serves now. InstallError("malformed") for a bad name or version."""
    try:
        validate_name("model name", name)
    except InvalidName as exc:
        raise InstallError("malformed", str(exc)) from exc
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 0):
        raise InstallError("malformed", "'version' must be a non-negative integer or absent")
    with lc._lock:
        pred = lc.predictor
        cand = pred.candidate
        if cand is not None and _matches(cand.model.installed, name, version):
            lc.stop_candidate()
        active, previous = pred.active, pred.previous
        drop_active = active is not None and _matches(active.installed, name, version)
        drop_prev = previous is not None and _matches(previous.installed, name, version)
        new_active = active
        new_prev = None if drop_prev else previous
        if drop_active:
            new_active, new_prev = new_prev, None  # another model held for rollback takes over
        lc.store.set_pointer(new_active.installed if new_active else None,
                             new_prev.installed if new_prev else None)
        if drop_active and active is not None:
            if new_active is not None:
                new_active.probation = 0
                lc.monitor.track(new_active, "active")
            lc.monitor.untrack(active)
        pred.active, pred.previous = new_active, new_prev
        removed = _delete_files(lc, name, version)
        serving = new_active.installed.public() if new_active else None
        log.warning("event=uninstalled name=%s version=%s removed=%s serving=%s", name, version, removed,
                    serving and f"{serving['name']} v{serving['version']}")
        details = {"name": name, "version": version, "removed": removed, "serving": serving}
        lc.report.emit_event("uninstalled", command_id=command_id, reason=None, details=details)
        lc.report.changed()
        return details


def _delete_files(lc: Lifecycle, name: str, version: int | None) -> list[str]:
    """Delete every unpacked folder (and its manifest) of `name`, read from the manifests."""
    root, removed = lc.store.root, []
    for mpath in sorted(root.glob("*.manifest.json")):
        try:
            m = json.loads(mpath.read_text()).get("model") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if m.get("name") != name or (version is not None and m.get("version") != version):
            continue
        dirname = mpath.name[: -len(".manifest.json")]
        shutil.rmtree(root / dirname, ignore_errors=True)
        mpath.unlink(missing_ok=True)
        removed.append(dirname)
    return removed
