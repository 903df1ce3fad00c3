"""What the demo tells the user at its two endings: the gate verdict that stopped v2, and, when
the scenario fails, its first cause in one line (the failed installs and their reason, read back
from the fleet; the first agent log line that says what went wrong), so nobody has to dig
through `.edgefleet/demo/agents/*.log` to learn that a download answered HTTP 500.

Waves are numbered from 1 here, as in the console; the API's `wave` is a 0-based index.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from edgefleet.demo_client import ApiCallError, FleetClient

FAILED_TARGETS = ("failed", "refused", "install-failed", "rollback-failed")
_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback|failed|refused)\b")


def wave_number(index: Any) -> str:
    """The operator's wave number (1-based) for the API's 0-based index."""
    return str(index + 1) if isinstance(index, int) else "?"


def failure_cause(client: FleetClient, rollout: dict[str, Any] | None, agents_dir: Path) -> str:
    """One line naming the first cause: failed installs by reason, else the rollout's own reason;
    then the first problem line of the agents' logs."""
    parts: list[str] = []
    if rollout:
        parts.append(_rollout_cause(client, rollout))
    log_line = first_log_problem(agents_dir)
    if log_line:
        parts.append(f"first agent log: {log_line}")
    return "; ".join(p for p in parts if p)


def _rollout_cause(client: FleetClient, rollout: dict[str, Any]) -> str:
    try:
        targets = client.get(f"/api/rollouts/{rollout['id']}/targets")["targets"]
    except (ApiCallError, OSError):
        targets = []
    failed = [t for t in targets if t.get("status") in FAILED_TARGETS]
    if failed:
        reasons = Counter(_short(t.get("reason") or t["status"]) for t in failed)
        first = failed[0]
        return (f"{len(failed)} install{'s' if len(failed) != 1 else ''} failed: "
                f"{', '.join(f'{r} (x{n})' if n > 1 else r for r, n in reasons.most_common(3))} "
                f"(first: {first['device_id']}, wave {wave_number(first.get('wave'))})")
    reason = rollout.get("reason")
    summary = reason.get("summary") if isinstance(reason, dict) else reason
    return f"rollout {rollout['id']} ended {rollout.get('status')}" + (f": {summary}" if summary else "")


def build_failure(results: list[Any]) -> str:
    """One line for failed compiler builds (compiler.pipeline.BuildResult): which, and the first
    reason in the compiler's words (a candidate's error, else the first failed gate's detail)."""
    bad = [r for r in results if not r.passed]
    if not bad:
        return ""
    first = bad[0]
    why = next((c["error"] for c in first.candidates if c.get("error")), None)
    if why is None:
        why = next((f"{g.get('gate')}: {g.get('detail')}" for g in first.gates if not g.get("passed")), "")
    names = sorted({g for r in bad for g in r.failed_gates})
    return (f"{len(bad)} of {len(results)} builds failed ({', '.join(names)}); first: {first.device_class} "
            f"{first.format} {first.precision}: {_short(why, 300)}")


def _short(reason: str, limit: int = 160) -> str:
    text = " ".join(str(reason).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def with_cause(message: str, client: FleetClient, rollout_id: int | None, work: Path) -> str:
    """The failure plus its first cause, read back from the fleet and the agents' logs."""
    rollout = None
    if rollout_id is not None:
        try:
            rollout = client.get(f"/api/rollouts/{rollout_id}")
        except (ApiCallError, OSError):
            rollout = None
    cause = failure_cause(client, rollout, work / "agents")
    return f"{message}: {cause}" if cause else message


def console_text(url: str, token: str, work: Path, once: bool, fleet_id: str = "demo") -> str:
    """Where to look after a failure: the live console, or how to serve the demo's fleet again."""
    if not once:
        return f"the console stays up: open {url}/console and sign in with the token\n  {token}\nCtrl-C stops the demo."
    return (f"console (stopped with the demo): {url}/console, token {token}\n"
            f"to look again: EDGEFLEET_API_TOKENS=admin:{token} EDGEFLEET_FLEET_ID={fleet_id} "
            f"EDGEFLEET_SIGNING_KEY={work / 'keys' / 'fleet.key'} edgefleet fleet --data-dir {work / 'fleet'} "
            "serve --port 0\n"
            f"logs: {work / 'demo.log'}, {work / 'agents'}/*.log")


def first_log_problem(agents_dir: Path) -> str:
    """`<log file>: <line>` for the earliest error line in any agent log (by the log's own order)."""
    for log in sorted(Path(agents_dir).glob("*.log")):
        try:
            with open(log, errors="replace") as fh:
                for line in fh:
                    if _LOG_PROBLEM.search(line):
                        return f"{log}: {_short(line.strip(), 200)}"
        except OSError:
            continue
    return ""


def explain_stop(rollout: dict[str, Any], canary: list[str]) -> str:
    """The automatic-rollback panel: which gates stopped v2 at which wave, and who went back."""
    reason = rollout.get("reason") or {}
    lines = [f"rollout {rollout['id']} (digits v2) stopped at wave {wave_number(rollout.get('current_wave'))}: "
             f"{reason.get('summary', rollout['status'])}"]
    for g in reason.get("gates", []):
        lines.append(f"  gate {g.get('gate')}: {gate_text(g)}")
    lines.append(f"canary devices rolled back to v1 by signed commands: {', '.join(canary)}")
    lines.append("devices outside the canary never received v2")
    return "\n".join(lines)


def gate_text(g: dict[str, Any]) -> str:
    """One line per failed gate, in the words an operator would use."""
    d = g.get("detail") if isinstance(g.get("detail"), dict) else {}
    text = f"{g.get('value')} (limit {g.get('threshold', g.get('limit', '?'))})"
    if g.get("gate") == "prediction_drift" and d:
        parts = [f"PSI {v['psi']} vs {k}" for k, v in d.items() if isinstance(v, dict) and "psi" in v]
        text = f"{', '.join(parts)} (limit {g.get('threshold', 0.2)}) over {d.get('samples', '?')} predictions"
    elif g.get("gate") == "feature_drift" and d:
        text += f": {len(d.get('drifted', []))} of {d.get('judged', '?')} input features drifted"
    return text
