"""REST API (/api/rollouts) and console pages (/console/rollouts) for rollouts.

Viewers read; operators create, approve, pause, resume, abort and roll back; admins rotate the
fleet key. Every change goes through service.py, which writes the audit log. Queued commands
are published at once when the app has a publisher (FleetContext.extras["rollout_publisher"],
set by evaluator.start_for_app), otherwise by the evaluator's next tick.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, url_for
from sqlmodel import Session, select

from fleet.api import responses as r
from fleet.api import schemas as sc
from fleet.api.validation import api, body, query
from fleet.app import fleet_context
from fleet.catalogue.lifecycle import LifecycleError
from fleet.errors import ApiError
from fleet.registry.auth import actor, current_principal, require_role
from fleet.rollouts import commands, keyrotation, service
from fleet.rollouts.evaluator import EvaluatorConfig
from fleet.rollouts.models import GateEvaluation, Rollout
from fleet.rollouts.spec import SpecError, TargetFilter
from fleet.rollouts.states import IllegalTransition

log = logging.getLogger(__name__)
bp = Blueprint("rollouts", __name__, template_folder="templates")
API = "/api/rollouts"


def _signer(db: Session) -> commands.FleetSigner:
    ctx = fleet_context()
    ev = ctx.extras.get("rollout_evaluator")
    if ev is not None:
        return ev.signer
    from fleet.registry.fleet_keys import signing_key_path

    return commands.load_signer(db, signing_key_path(ctx.settings))


def _cfg() -> EvaluatorConfig:
    return EvaluatorConfig(public_url=fleet_context().settings.public_url)


def _publish() -> None:
    ctx = fleet_context()
    pub = ctx.extras.get("rollout_publisher")
    if pub is not None:
        try:
            commands.flush_outbox(ctx.engine, pub)
        except Exception:  # noqa: BLE001 - the evaluator retries from the outbox
            log.exception("publishing rollout commands failed; the evaluator will retry")


def _guard(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except service.RolloutError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc
    except keyrotation.RotationError as exc:
        raise ApiError(exc.status, exc.code, str(exc), exc.details) from exc
    except SpecError as exc:
        raise ApiError(422, "invalid-spec", str(exc)) from exc
    except LifecycleError as exc:  # issue 16: retired versions
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except IllegalTransition as exc:   # the state table refused a move (e.g. raced with the evaluator)
        raise ApiError(409, "illegal-transition", str(exc)) from exc


def _rollout(db: Session, rollout_id: int) -> Rollout:
    return _guard(service.get_rollout, db, rollout_id)


# ------------------------------------------------------------------------------------------
# REST


@bp.get(API)
@require_role("viewer")
@api(query=sc.RolloutListQuery, responses={200: r.RolloutList})
def list_rollouts():  # type: ignore[no-untyped-def]
    """The latest 200 rollouts, newest first; `status` filters (running, paused, completed, ...)."""
    status = query().status
    with fleet_context().session() as db:
        q = select(Rollout).order_by(Rollout.id.desc())
        if status:
            q = q.where(Rollout.status == status)
        return jsonify({"rollouts": [service.rollout_summary(db, r) for r in db.exec(q.limit(200))]})


@bp.post(API)
@require_role("operator")
@api(body=sc.RolloutCreate, responses={201: r.RolloutDetail}, invalid=(422, "invalid-spec"))
def create():  # type: ignore[no-untyped-def]
    """Create a staged rollout: model version, target filter, cumulative waves and their gates."""
    spec = body().model_dump(exclude_unset=True, exclude_none=True)
    allow_deprecated = bool(spec.pop("allow_deprecated", False))
    with fleet_context().session() as db:
        from fleet.api.lifecycle import guard
        from fleet.catalogue.lifecycle import rollout_check

        warnings = guard(rollout_check, db, spec["model_name"], spec["version"], allow_deprecated)  # issue 16
        ro = _guard(service.create_rollout, db, spec, actor())
        db.flush()
        out = service.rollout_detail(db, ro)
    return jsonify({**out, "warnings": warnings} if warnings else out), 201


@bp.get(f"{API}/<int:rollout_id>")
@require_role("viewer")
@api(responses={200: r.RolloutDetail})
def detail(rollout_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify(service.rollout_detail(db, _rollout(db, rollout_id)))


@bp.get(f"{API}/<int:rollout_id>/targets")
@require_role("viewer")
@api(query=sc.TargetsQuery, responses={200: r.TargetList})
def targets(rollout_id: int):  # type: ignore[no-untyped-def]
    """The rollout's devices with their wave and status; `wave` (0-based index) filters."""
    wave = query().wave
    with fleet_context().session() as db:
        return jsonify({"targets": service.rollout_targets(db, _rollout(db, rollout_id), wave)})


@bp.get(f"{API}/<int:rollout_id>/targets/<device_id>/history")
@require_role("viewer")
@api(responses={200: r.TargetHistory})
def history(rollout_id: int, device_id: str):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        return jsonify({"history": service.target_history(db, _rollout(db, rollout_id), device_id)})


@bp.get(f"{API}/<int:rollout_id>/gates")
@require_role("viewer")
@api(responses={200: r.GateEvaluations})
def gate_values(rollout_id: int):  # type: ignore[no-untyped-def]
    """Gate values over time (every stored evaluation, oldest first)."""
    with fleet_context().session() as db:
        _rollout(db, rollout_id)
        rows = db.exec(select(GateEvaluation).where(GateEvaluation.rollout_id == rollout_id)
                       .order_by(GateEvaluation.at).limit(5000)).all()
        return jsonify({"evaluations": [{"at": e.at, "wave": e.wave_index, "status": e.status,
                                         "devices": e.devices, "results": e.results} for e in rows]})


def _operation(rollout_id: int, op: str, reason: str = "") -> Any:
    with fleet_context().session() as db:
        if op == "approve":
            _guard(service.approve, db, rollout_id, actor())
        elif op == "pause":
            _guard(service.pause, db, rollout_id, actor(), reason or "operator pause")
        elif op == "resume":
            _guard(service.resume, db, rollout_id, actor())
        elif op == "abort":
            _guard(service.abort, db, rollout_id, actor())
        elif op == "rollback":
            _guard(service.rollback_rollout, db, rollout_id, actor(), _signer(db), _cfg())
        db.flush()
        out = service.rollout_detail(db, _rollout(db, rollout_id))
    _publish()
    return out


for _op in ("approve", "pause", "resume", "abort", "rollback"):
    def _view(rollout_id: int, _op: str = _op):  # type: ignore[no-untyped-def]
        return jsonify(_operation(rollout_id, _op, body().reason))

    _view.__doc__ = f"{_op.capitalize()} the rollout" + (" (optional `reason`)." if _op == "pause" else ".")
    bp.add_url_rule(f"{API}/<int:rollout_id>/{_op}", f"op_{_op}", require_role("operator")(
        api(body=sc.PauseBody, body_required=False, responses={200: r.RolloutDetail})(_view)), methods=["POST"])


@bp.post(f"{API}/rollback-version")
@require_role("operator")
@api(body=sc.RollbackVersion, responses={200: r.JsonObject})
def rollback_version():  # type: ignore[no-untyped-def]
    """Roll back a version fleet-wide, or for a cohort (`target` filter), with one call."""
    b = body()
    name, version = b.model_name, b.version
    t = b.target or sc.TargetSpec()
    flt = TargetFilter(fleet=t.fleet or fleet_context().settings.fleet_id, device_classes=tuple(t.device_classes),
                       tags=tuple(t.tags), attributes=dict(t.attributes), device_ids=tuple(t.device_ids))
    with fleet_context().session() as db:
        out = _guard(service.rollback_version, db, name, version, actor(), _signer(db), flt, _cfg())
    _publish()
    return jsonify(out)


@bp.get(f"{API}/keys")
@require_role("viewer")
@api(responses={200: r.JsonObject})
def key_status():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        _signer(db)
        return jsonify(keyrotation.rotation_status(db))


@bp.post(f"{API}/keys/rotate")
@require_role("admin")
@api(body=sc.KeyRotate, body_required=False, responses={200: r.JsonObject})
def key_rotate():  # type: ignore[no-untyped-def]
    """Start a rotation: `new_key_path` names the new fleet key on the fleet host and `keylist` is
    a root-signed key list trusting it and the active key; every device gets the list in a
    rotate-key command signed with the active key."""
    ctx = fleet_context()
    b = body()
    with ctx.session() as db:
        out = _guard(keyrotation.begin_rotation, db, _signer(db), b.new_key_path or "", actor(),
                     settings=ctx.settings, keylist=b.keylist, fleet=ctx.settings.fleet_id)
    _publish()
    return jsonify(out)


@bp.get(f"{API}/keys/keylist")
@require_role("viewer")
@api(responses={200: r.JsonObject})
def keylist_get():  # type: ignore[no-untyped-def]
    """The signed key list devices are given (version 0 and a hint before one was uploaded)."""
    return jsonify(keyrotation.keylist_status(fleet_context().settings))


@bp.post(f"{API}/keys/keylist")
@require_role("admin")
@api(body=sc.KeyListUpload, responses={200: r.JsonObject})
def keylist_publish():  # type: ignore[no-untyped-def]
    """Upload a signed key list (root-signed offline, or by a threshold of fleet keys, higher
    version); every active device gets it in a rotate-key command."""
    ctx = fleet_context()
    with ctx.session() as db:
        out = _guard(keyrotation.publish_keylist, db, _signer(db), ctx.settings, body().keylist, actor(),
                     fleet=ctx.settings.fleet_id)
    _publish()
    return jsonify(out)


@bp.post(f"{API}/keys/finish")
@require_role("admin")
@api(body=sc.KeyFinish, body_required=False, responses={200: r.JsonObject})
def key_finish():  # type: ignore[no-untyped-def]
    """Finish a rotation: the new key becomes the only one (`force` even if devices have not acknowledged)."""
    ctx = fleet_context()
    with ctx.session() as db:
        out = _guard(keyrotation.finish_rotation, db, actor(), force=body().force)
    ev = ctx.extras.get("rollout_evaluator")
    if ev is not None:
        with ctx.session() as db:
            ev.signer = commands.load_signer(db, "")
    return jsonify(out)


# ------------------------------------------------------------------------------------------
# console


def _page(template: str, **kw: Any) -> str:
    from fleet.console import charts

    return render_template(template, principal=current_principal(), nav="rollouts.console_list", charts=charts,
                           **kw)


@bp.get("/console/rollouts")
@require_role("viewer", html=True)
def console_list():  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        rows = [service.rollout_summary(db, r) for r in db.exec(select(Rollout).order_by(Rollout.id.desc())
                                                                .limit(100))]
        return _page("rollouts/list.html", rollouts=rows)


@bp.get("/console/rollouts/<int:rollout_id>")
@require_role("viewer", html=True)
def console_detail(rollout_id: int):  # type: ignore[no-untyped-def]
    with fleet_context().session() as db:
        r = _rollout(db, rollout_id)
        d = service.rollout_detail(db, r, history=500)
        series: dict[str, list[float]] = {}
        for h in d["gate_history"]:
            for gate, v in h["values"].items():
                if v is not None:
                    series.setdefault(gate, []).append(float(v))
        return _page("rollouts/detail.html", r=d, series=series,
                     targets=service.rollout_targets(db, r)[:500])


@bp.post("/console/rollouts/<int:rollout_id>/<op>")
@require_role("operator", html=True)
def console_action(rollout_id: int, op: str):  # type: ignore[no-untyped-def]
    if op not in ("approve", "pause", "resume", "abort", "rollback"):
        raise ApiError(404, "not-found", f"unknown action {op}")
    _operation(rollout_id, op)
    return redirect(url_for("rollouts.console_detail", rollout_id=rollout_id))
