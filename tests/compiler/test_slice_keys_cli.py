"""Slice keys declared at build, as a user does it (issue 14 item 3): `edgefleet compile --slice-key`
and `slices = [...]` in compile.toml reach the bundle's `monitoring.slices`; an unknown column is
one line and exit 2. A real agent installs the bundle, keeps outcomes per declared slice, and the
fleet's analytics see the slice gap and fail the `slice_gap` verdict on it."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compiler.cli import compile_command

pytestmark = pytest.mark.slow


def _run(args: list[str], data_files, keys, out: Path, onnx: Path):
    base = ["--onnx", str(onnx), "--eval", str(data_files["eval"]), "--calib", str(data_files["calib"]),
            "--signing-key", str(keys[0]), "--out", str(out), "--latency-iterations", "5", "--quiet"]
    return CliRunner().invoke(compile_command, [*base, *args], catch_exceptions=False)


def _manifest(bundle: Path) -> dict:
    with tarfile.open(bundle) as tar:
        return json.loads(tar.extractfile("manifest.json").read())


@pytest.mark.parametrize("extra, message", [
    (["--slice-key", "px=99"], "--slice-key px: unknown column 99: input 'input' has 64 columns per sample (0-63)"),
    (["--slice-key", "px=pixels[3]"], "unknown column: the model has no input 'pixels' (inputs: input)"),
    (["--slice-key", "region", "--slice-key", "region"], "--slice-key 'region' is given twice"),
    (["--slice-key", "re gion"], "--slice-key 're gion': a key is a name like region"),
    (["--slice-key", "px=3", "--task", "embedding"], "--slice-key needs a classification or regression model"),
])
def test_bad_slice_keys_exit_2_with_one_line(extra, message, data_files, keys, tmp_path, mlp_onnx) -> None:
    result = _run(extra, data_files, keys, tmp_path / "out", mlp_onnx)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.bundle"))


def test_flags_reach_the_manifest(data_files, keys, tmp_path, mlp_onnx, digits) -> None:
    result = _run(["--slice-key", "region", "--slice-key", "ink=input[36]"], data_files, keys, tmp_path / "o",
                  mlp_onnx)
    assert result.exit_code == 0, result.output
    [bundle] = (tmp_path / "o").glob("*.bundle")
    mon = _manifest(bundle)["monitoring"]
    [feat] = mon["slices"]["features"]
    assert mon["slices"]["metadata"] == ["region"]
    assert (feat["key"], feat["input"], feat["index"]) == ("ink", "input", 36)
    quartiles = np.quantile(digits["x_test"][:, 36].astype(np.float64), [0.25, 0.5, 0.75])
    assert feat["edges"] == sorted({round(float(q), 6) for q in quartiles})
    # the agent's own reader of the manifest takes both kinds of key
    from agent.confidence import MonitorSpec, Slicer

    spec = MonitorSpec.from_manifest({"monitoring": mon})
    x = digits["x_test"][:1].astype(np.float32)
    assert Slicer(spec).key({"region": "eu"}, {"input": x}).startswith("region=eu,ink=")


def test_toml_slices_give_per_slice_outcomes_and_a_slice_gap(data_files, keys, tmp_path, mlp_onnx, digits) -> None:
    from agent.config import AgentConfig, TelemetryConfig
    from agent.daemon import Agent
    from fleet.analytics.quality import merge_payloads
    from fleet.analytics.verdicts import FAIL, build_slice_gap, slice_gap

    cfg = tmp_path / "compile.toml"
    cfg.write_text('[compile]\nslices = ["region"]\nname = "sliced"\n')
    result = _run(["--config", str(cfg)], data_files, keys, tmp_path / "o", mlp_onnx)
    assert result.exit_code == 0, result.output
    [bundle] = (tmp_path / "o").glob("sliced-*.bundle")
    manifest = _manifest(bundle)
    assert manifest["monitoring"]["slices"] == {"metadata": ["region"]}

    agent = Agent(AgentConfig(device_id="sk-1", state_dir=str(tmp_path / "agent"), build_keys=[str(keys[1])],
                              telemetry=TelemetryConfig(window_s=3600, sample_rate=1.0,
                                                        max_samples_per_s=100000))).start()
    try:
        agent.install(bundle)
        x, y = digits["x_test"].astype(np.float32), digits["y_test"]
        for i in range(160):   # eu's app reports the true label; us's app a wrong one (a broken slice)
            region = "eu" if i % 2 else "us"
            r = agent.predict(x[i:i + 1], metadata={"region": region})
            agent.feedback(r.request_id, int(y[i]) if region == "eu" else (int(y[i]) + 1) % 10)
        payloads = agent.flush_telemetry()
    finally:
        agent.stop()
    slices = payloads[0]["outcomes"]["slices"]
    assert set(slices) == {"region=eu", "region=us"} and all(s["n"] == 80 for s in slices.values())
    q = merge_payloads(payloads)
    assert q.slices()["region=us"]["accuracy"] == 0.0 and q.slices()["region=eu"]["accuracy"] > 0.85
    v = slice_gap(q, build_gap=build_slice_gap(manifest))
    assert v.status == FAIL and v.detail["worst"] == "region=us"
