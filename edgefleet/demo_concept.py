"""The demo's third act (issue 14): concept drift. v3 sees exactly the inputs v1 sees, so no
drift gate can tell; but it was trained and validated on a stale labelling convention, so its
answers are wrong for part of the classes. The devices' apps feed the true labels back through
the agent's local feedback endpoint; the `online_accuracy` gate compares the canary's labelled
accuracy with the control cohort's (v1) and stops v3 at the canary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# The stale convention v3 was trained under: these digit pairs were labelled the other way round.
STALE_SWAPS = ((1, 7), (3, 8), (4, 9))
# Labels before the online_accuracy gate judges, and how far below control counts as drift.
CONCEPT_GATES = {"min_labelled": 60, "max_accuracy_drop": 0.05, "accuracy_alpha": 0.05}


def stale_labels(y: np.ndarray) -> np.ndarray:
    out = y.copy()
    for a, b in STALE_SWAPS:
        out[y == a], out[y == b] = b, a
    return out


def build_v3(work: Path, build_key: Path, view: Any, compile_quiet: Any, classes: list[str]) -> list[Any]:
    """Train v3 on the stale labels and compile it; the build gates pass (they check against the
    eval set, labelled the same stale way)."""
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model
    from edgefleet import demo_model as dm

    data = dm.load_digits_data()
    y_train, y_eval = stale_labels(data.train_y), stale_labels(data.eval_y)
    view.say("training digits v3 on a stale labelling convention (pairs "
             + ", ".join(f"{a}/{b}" for a, b in STALE_SWAPS) + " swapped); same raw pixels as v1")
    model = dm.train_classifier(data.train_x, y_train, seed=3, epochs=20)  # quick: the act is about the field
    view.say(f"  accuracy on its own (stale) eval set: {dm.accuracy(model, data.eval_x, y_eval):.3f}; "
             f"on the truth: {dm.accuracy(model, data.eval_x, data.eval_y):.3f} (nobody sees that offline)")
    calib = dm.write_npz(work / "data/v3-calib.npz", data.train_x[:256], y_train[:256])
    ev = dm.write_npz(work / "data/v3-eval.npz", data.eval_x, y_eval, data.eval_slices)
    with compile_quiet(work / "compile.log"):
        results = compile_model(CompileConfig(
            torch=model, example_input=(1, 64), calib=str(calib), eval=str(ev), device_classes=classes,
            name="digits", version=3, signing_key=build_key, out=work / "build", progress=False,
            latency_iterations=20))
    return results


def explain_concept_stop(rollout: dict[str, Any], canary: list[str]) -> str:
    reason = rollout.get("reason") or {}
    lines = [f"rollout {rollout['id']} (digits v3) stopped at the canary: {reason.get('summary', rollout['status'])}"]
    for g in reason.get("gates", []):
        if g.get("gate") == "online_accuracy":
            d = g.get("detail") or {}
            acc = (d.get("accuracy") or {})
            lines.append(f"  gate online_accuracy: canary accuracy {acc.get('value')} on {acc.get('n')} labels "
                         f"(interval {acc.get('low')}..{acc.get('high')}) vs {d.get('against') or 'reference'} "
                         f"{d.get('reference')}, one-sided p={d.get('p_value')}")
        else:
            lines.append(f"  gate {g.get('gate')}: {g.get('value')}")
    lines.append("inputs and predictions looked normal (no drift gate fired); the labels fed back on the "
                 "devices showed v3 is wrong")
    lines.append(f"canary devices rolled back to v1: {', '.join(canary)}")
    return "\n".join(lines)


def concept_act(view: Any, work: Path, fleet: Any, client: Any, outcome: Any, timeout_s: float) -> None:
    """Build and upload v3, roll it out with the online_accuracy gate on, watch the canary come back."""
    from edgefleet import demo

    results = build_v3(work, fleet.build_key, view, demo._output_to, list(demo.CLASSES))
    if not all(r.passed for r in results):
        raise demo.DemoFailed(f"compiling v3: {', '.join(g for r in results for g in r.failed_gates)}")
    for r in results:
        client.upload_bundle(r.bundle_path)
    view.say(f"uploaded digits v3 ({len(results)} signed bundles); its build gates passed")
    # One live rollout per model: the operator, having read why, aborts the paused v2 (its canary is
    # already back on v1; abort sends nothing more).
    client.post(f"/api/rollouts/{outcome.v2_rollout['id']}/abort", {})
    view.say(f"operator aborted the paused v2 rollout {outcome.v2_rollout['id']} (its canary is back on v1)")
    spec = demo._rollout_spec(3, [("canary", 33), ("rest", 100)])
    spec["gates"] = {**spec["gates"], **CONCEPT_GATES}
    r = client.post("/api/rollouts", spec)
    view.say(f"rollout {r['id']}: digits v3 (canary 33%, rest 100%), gated on installs, errors, latency, drift "
             f"and online accuracy from labels fed back on the devices", style="bold cyan")
    view.watch(r["id"])

    def done() -> dict[str, Any] | None:
        cur = client.get(f"/api/rollouts/{r['id']}")
        return cur if cur["status"] in ("completed", "paused", "rolled-back", "aborted") else None

    r3 = demo.wait_until(view, "rollout of v3", done, timeout_s)
    outcome.v3_rollout = r3
    failed = {g.get("gate") for g in (r3.get("reason") or {}).get("gates", [])}
    if r3["status"] not in ("paused", "rolled-back") or "online_accuracy" not in failed:
        raise demo.DemoFailed(f"v3 was expected to be stopped at the canary by online_accuracy, but it ended "
                              f"{r3['status']} ({sorted(failed)})")
    canary = [t["device_id"] for t in client.get(f"/api/rollouts/{r3['id']}/targets?wave=0")["targets"]]

    def canary_back() -> bool:
        snap = view.poll(force=True)
        return all(demo._installed(snap).get(d) == 1 for d in canary)

    demo.wait_until(view, "the v3 canary back on v1", canary_back, 90)
    view.panel("concept drift caught", explain_concept_stop(r3, canary), "yellow")
