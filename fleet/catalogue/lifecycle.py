"""Model lifecycle and governance (issue 16): owners, version status (active -> deprecated ->
retired) and the rollout guard that enforces it, the revocation list for retired versions, and
the rollout that moves devices off a retired version. Every change is audited with a reason.

Status is per (model, version), across its device-class builds: retiring "digits v3" retires
every build of v3. No row means active. Retired is final (a new version replaces it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from fleet import audit
from fleet.models import Device, ModelOwner, ModelVersion, ModelVersionStatus

STATUSES = ("active", "deprecated", "retired")
# which status may follow which: retired is final (anti-rollback keeps it off devices for good)
TRANSITIONS: dict[str, tuple[str, ...]] = {"active": ("deprecated", "retired"),
                                           "deprecated": ("active", "retired"),
                                           "retired": ()}
OWNER_FIELDS = ("team", "contact", "oncall")
MAX_TEXT = 500


class LifecycleError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- ownership --------------------------------------------------------------------------------
@dataclass
class OwnerFields:
    team: str = ""
    contact: str = ""
    oncall: str = ""
    review_interval_days: int | None = None

    def missing(self) -> list[str]:
        return [f for f in OWNER_FIELDS if not getattr(self, f).strip()]

    def check(self) -> None:
        for f in OWNER_FIELDS:
            if len(getattr(self, f)) > MAX_TEXT:
                raise LifecycleError(400, "bad-owner", f"owner {f} is longer than {MAX_TEXT} characters")
        d = self.review_interval_days
        if d is not None and not 1 <= d <= 3650:
            raise LifecycleError(400, "bad-owner", f"review_interval_days must be 1..3650, got {d}")


def owner_view(o: ModelOwner | None, name: str) -> dict[str, Any]:
    if o is None:
        return {"name": name, "team": "", "contact": "", "oncall": "", "review_interval_days": 90,
                "updated_at": None, "updated_by": "", "set": False}
    return {"name": o.name, "team": o.team, "contact": o.contact, "oncall": o.oncall,
            "review_interval_days": o.review_interval_days, "created_at": o.created_at,
            "updated_at": o.updated_at, "updated_by": o.updated_by, "set": True}


def check_first_owner(db: Session, name: str, fields: OwnerFields, required: bool) -> None:
    """Before storing a first upload: a production fleet needs team, contact and on-call for a
    model it has never seen (422 naming the missing query parameters)."""
    fields.check()
    if required and db.get(ModelOwner, name) is None and fields.missing():
        miss = ", ".join(f"owner_{f}" if f != "oncall" else "oncall" for f in fields.missing())
        raise LifecycleError(422, "owner-required", f"model {name!r} has no owner yet and this fleet runs in"
                                                    f" production mode; pass the owner with the upload, missing: {miss}")


def owner_at_upload(db: Session, name: str, fields: OwnerFields, actor: str) -> ModelOwner | None:
    """Set the owner at the model's first upload (later uploads never overwrite it: change it
    with set_owner, which audits the change)."""
    if db.get(ModelOwner, name) is not None or all(not getattr(fields, f) for f in OWNER_FIELDS):
        return None
    return set_owner(db, name, fields, actor, "set at first upload")


def set_owner(db: Session, name: str, fields: OwnerFields, actor: str, reason: str) -> ModelOwner:
    fields.check()
    if db.exec(select(ModelVersion.id).where(ModelVersion.name == name)).first() is None:
        raise LifecycleError(404, "not-found", f"no model {name!r}")
    o = db.get(ModelOwner, name)
    before = owner_view(o, name) if o is not None else None
    if o is None:
        o = ModelOwner(name=name)
    for f in OWNER_FIELDS:
        value = getattr(fields, f)
        if value or before is None:
            setattr(o, f, value.strip())
    if fields.review_interval_days is not None:
        o.review_interval_days = fields.review_interval_days
    o.updated_at, o.updated_by = time.time(), actor
    db.add(o)
    db.flush()
    audit.record(db, actor, "model.owner", f"model:{name}", before, {**owner_view(o, name), "reason": reason})
    return o


# -- version status ---------------------------------------------------------------------------
def status_of(db: Session, name: str, version: int) -> ModelVersionStatus | None:
    return db.exec(select(ModelVersionStatus).where(ModelVersionStatus.name == name,
                                                    ModelVersionStatus.version == version)).first()


def status_name(db: Session, name: str, version: int) -> str:
    row = status_of(db, name, version)
    return row.status if row is not None else "active"


def status_view(name: str, version: int, row: ModelVersionStatus | None) -> dict[str, Any]:
    if row is None:
        return {"name": name, "version": version, "status": "active", "reason": "", "changed_by": "",
                "changed_at": None}
    return {"name": name, "version": version, "status": row.status, "reason": row.reason,
            "changed_by": row.changed_by, "changed_at": row.changed_at}


def set_status(db: Session, name: str, version: int, new: str, reason: str, actor: str) -> ModelVersionStatus:
    """Move a version along active -> deprecated -> retired (deprecated may go back to active)."""
    if new not in STATUSES:
        raise LifecycleError(400, "bad-status", f"status must be one of {', '.join(STATUSES)}, got {new!r:.40}")
    reason = (reason or "").strip()
    if not reason:
        raise LifecycleError(400, "reason-required", "a status change needs a reason")
    if len(reason) > MAX_TEXT * 4:
        raise LifecycleError(400, "bad-reason", f"reason is longer than {MAX_TEXT * 4} characters")
    if db.exec(select(ModelVersion.id).where(ModelVersion.name == name, ModelVersion.version == version)).first() \
            is None:
        raise LifecycleError(404, "not-found", f"no {name} v{version}")
    row = status_of(db, name, version)
    old = row.status if row is not None else "active"
    if new == old:
        raise LifecycleError(409, "same-status", f"{name} v{version} is already {old}")
    if new not in TRANSITIONS[old]:
        raise LifecycleError(409, "bad-transition", f"{name} v{version} is {old}; it cannot become {new}"
                                                    + (" (retired is final: upload a new version)"
                                                       if old == "retired" else ""))
    before = status_view(name, version, row)
    row = row or ModelVersionStatus(name=name, version=version)
    row.status, row.reason, row.changed_by, row.changed_at = new, reason, actor, time.time()
    db.add(row)
    db.flush()
    audit.record(db, actor, f"model.{new}" if new != "active" else "model.reactivate",
                 f"model:{name}:v{version}", before, status_view(name, version, row))
    return row


def rollout_check(db: Session, name: str, version: int, allow_deprecated: bool) -> list[str]:
    """The guard of every new rollout: retired never (409), deprecated only with the explicit
    override (409 without it). Returns warnings to show with the created rollout."""
    st = status_of(db, name, version)
    if st is None or st.status == "active":
        return []
    if st.status == "retired":
        raise LifecycleError(409, "version-retired", f"{name} v{version} is retired ({st.reason}); it cannot be"
                                                     " rolled out. Roll out a newer version (POST .../move-off)")
    if not allow_deprecated:
        raise LifecycleError(409, "version-deprecated", f"{name} v{version} is deprecated ({st.reason}); pass"
                                                        " allow_deprecated=true to roll it out anyway")
    return [f"{name} v{version} is deprecated: {st.reason}"]


def revocations(db: Session) -> list[dict[str, Any]]:
    """Every retired version, as the `revoked` section of the next signed key list: devices
    refuse to install them (agent.keylist)."""
    rows = db.exec(select(ModelVersionStatus).where(ModelVersionStatus.status == "retired")
                   .order_by(ModelVersionStatus.name, ModelVersionStatus.version)).all()
    return [{"model": r.name, "version": r.version} for r in rows]


def move_off_spec(db: Session, name: str, version: int, fleet: str) -> dict[str, Any]:
    """A rollout spec that moves every device still running `name` v`version` to the newest
    active version (one wave, all of them, the fleet's default gates)."""
    on_it = [d.id for d in db.exec(select(Device).where(Device.fleet == fleet, Device.status == "active",
                                                        Device.installed_name == name,
                                                        Device.installed_version == version))]
    if not on_it:
        raise LifecycleError(422, "no-devices", f"no active device of fleet {fleet!r} runs {name} v{version}")
    candidates = sorted({v for v in db.exec(select(ModelVersion.version).where(ModelVersion.name == name))},
                        reverse=True)
    target = next((v for v in candidates if v != version and status_name(db, name, v) == "active"), None)
    if target is None:
        raise LifecycleError(422, "no-replacement", f"no active version of {name} to move devices to;"
                                                    " upload one first")
    return {"model_name": name, "version": target, "name": f"{name}-off-v{version}",
            "target": {"fleet": fleet, "device_ids": on_it},
            "waves": [{"name": "all", "percent": 100}]}
