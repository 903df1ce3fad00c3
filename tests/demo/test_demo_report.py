"""When the demo fails it names the first cause in one line (failed installs by reason, the first
problem line of the agents' logs) instead of a raw dict, with 1-based wave numbers (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet.demo_client import FleetClient
from edgefleet.demo_report import explain_stop, failure_cause, wave_number


class Answers(FleetClient):
    """The fleet's answers, as its REST API gives them (shapes from fleet/rollouts/api.py)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__("http://fleet.invalid", "t")
        self.answers = answers

    def get(self, path: str) -> Any:
        return self.answers[path]


def test_failed_installs_are_named_with_the_first_agent_log_line(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "arm-eu-1.log").write_text("2026 INFO agent started\n")
    (agents / "x86-eu-1.log").write_text(
        "2026 INFO agent started\n2026 ERROR command install failed: download-failed: HTTP Error 500: "
        "INTERNAL SERVER ERROR (http://127.0.0.1:8080/artifacts/ab12)\n2026 ERROR again\n")
    reason = "download-failed: HTTP Error 500: INTERNAL SERVER ERROR (http://127.0.0.1:8080/artifacts/ab12)"
    targets = [{"device_id": f"d{i}", "wave": 0, "status": "failed", "reason": reason} for i in range(6)]
    client = Answers({"/api/rollouts/1/targets": {"targets": targets}})
    rollout = {"id": 1, "status": "rolled-back", "current_wave": 0,
               "reason": {"summary": "rollback-impossible:no-previous-version"}}
    line = failure_cause(client, rollout, agents)
    assert "\n" not in line
    assert line.startswith(f"6 installs failed: {reason} (x6) (first: d0, wave 1)")
    assert "first agent log: " in line and "x86-eu-1.log: 2026 ERROR command install failed: download-failed" in line
    assert "{" not in line   # no raw Python dict


def test_without_failed_targets_the_rollouts_reason_is_said(tmp_path: Path) -> None:
    client = Answers({"/api/rollouts/2/targets": {"targets": [{"device_id": "a", "wave": 0, "status": "healthy"}]}})
    line = failure_cause(client, {"id": 2, "status": "paused", "reason": {"summary": "gate latency breached"}},
                         tmp_path)
    assert line == "rollout 2 ended paused: gate latency breached"


def test_waves_are_numbered_from_one() -> None:
    assert wave_number(0) == "1" and wave_number(None) == "?"
    text = explain_stop({"id": 3, "status": "paused", "current_wave": 0,
                         "reason": {"summary": "drift", "gates": [{"gate": "feature_drift", "value": 0.4,
                                                                    "threshold": 0.2}]}}, ["d1"])
    assert "stopped at wave 1" in text and "gate feature_drift: 0.4 (limit 0.2)" in text


def test_a_failed_build_says_the_compilers_reason() -> None:
    from compiler.pipeline import BuildResult
    from edgefleet.demo_report import build_failure

    err = "running onnx int8 failed: ImportError: cannot import name 'x' from 'compiler.manifest'"
    ok = BuildResult("arm64-cortex-a", "tflite", "int8", True, None, {}, [], {}, 1)
    broken = BuildResult("x86-64-generic", "onnx", "int8", False, None, {}, [], {}, 0,
                         candidates=[{"precision": "int8", "passed": False, "error": err}], failed_gates=["build-error"])
    slow = BuildResult("x86-avx512-vnni", "openvino", "int8", False, None, {},
                       [{"gate": "min-speedup", "passed": False, "detail": "0.7x FP32 ONNX Runtime"}], {}, 1,
                       failed_gates=["min-speedup"])
    line = build_failure([ok, broken, slow])
    assert line == (f"2 of 3 builds failed (build-error, min-speedup); first: x86-64-generic onnx int8: {err}")
    assert build_failure([slow]).endswith("openvino int8: min-speedup: 0.7x FP32 ONNX Runtime")
    assert build_failure([ok]) == ""


def test_the_failure_message_keeps_the_console_reachable(tmp_path: Path) -> None:
    from edgefleet.demo_report import console_text, with_cause

    reason = "download-failed: HTTP Error 500"
    client = Answers({"/api/rollouts/1": {"id": 1, "status": "rolled-back", "current_wave": 0, "reason": None},
                      "/api/rollouts/1/targets": {"targets": [{"device_id": "d0", "wave": 0, "status": "failed",
                                                               "reason": reason}]}})
    msg = with_cause("v1 rollout 1 ended rolled-back", client, 1, tmp_path)
    assert msg == f"v1 rollout 1 ended rolled-back: 1 install failed: {reason} (first: d0, wave 1)"
    once = console_text("http://127.0.0.1:8080", "demo_tok", tmp_path, once=True, fleet_id="demo")
    assert "http://127.0.0.1:8080/console" in once and "demo_tok" in once and "EDGEFLEET_FLEET_ID=demo" in once
    assert "Ctrl-C" in console_text("http://127.0.0.1:8080", "demo_tok", tmp_path, once=False)
