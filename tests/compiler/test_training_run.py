"""Issue 16, lineage back to training: `--training-run` facts land in the manifest's
provenance.training (and in the fleet's model card); `--parent` writes provenance.parent for a
re-quantized model; bad files are one clear line and exit 2."""

from __future__ import annotations

import json

from click.testing import CliRunner

from agent.bundle import verify_bundle
from agent.keys import Keyring
from compiler.cli import compile_command

RUN_TOML = '''git_commit = "3f2c1a9"
run_url = "https://ci.example.com/runs/812"
intended_use = "digit recognition on the line scanners"
limitations = "not trained on handwritten input"
data_versions = { train = "sha256:aa11", eval = "sha256:bb22" }
hyperparameters = { lr = 0.001, epochs = 30 }
'''


def test_training_run_and_parent_in_provenance(build, mlp_onnx, data_files, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "run.toml").write_text(RUN_TOML)
    [fp32] = build(onnx=str(mlp_onnx), eval=str(data_files["eval"]), device_classes=["x86-64-generic"],
                   precision="fp32", name="digits", version=1, training_run=tmp_path / "run.toml",
                   out=tmp_path / "v1")
    assert fp32.passed, fp32.to_dict()
    prov = verify_bundle(fp32.bundle_path, Keyring.from_files([keys[1]])).manifest["provenance"]
    assert prov["training"]["git_commit"] == "3f2c1a9" and prov["training"]["data_versions"]["eval"] == "sha256:bb22"
    assert prov["training"]["hyperparameters"] == {"lr": 0.001, "epochs": 30} and "parent" not in prov

    # re-quantized from that bundle: the parent is recorded by name, version and digest
    (tmp_path / "run.json").write_text(json.dumps({"git_commit": "3f2c1a9", "run_id": "813"}))
    [again] = build(onnx=str(mlp_onnx), eval=str(data_files["eval"]), device_classes=["x86-64-generic"],
                    precision="fp32", name="digits", version=2, training_run=tmp_path / "run.json",
                    parent=fp32.bundle_path, out=tmp_path / "v2")
    prov2 = verify_bundle(again.bundle_path, Keyring.from_files([keys[1]])).manifest["provenance"]
    assert prov2["parent"] == "digits v1" and prov2["parent_bundle"]["version"] == 1
    assert len(prov2["parent_bundle"]["bundle_sha256"]) == 64 and prov2["training"] == {"git_commit": "3f2c1a9",
                                                                                         "run_id": "813"}


def test_bad_training_run_is_one_line_exit_2(mlp_onnx, data_files, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = {"typo.toml": 'git_comit = "x"\n', "broken.toml": "git_commit = \n", "list.json": "[1, 2]",
           "types.json": json.dumps({"hyperparameters": {"lr": [1, 2]}})}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        res = CliRunner().invoke(compile_command, ["--onnx", str(mlp_onnx), "--eval", str(data_files["eval"]),
                                                   "--signing-key", str(keys[0]), "--out", str(tmp_path / "o"),
                                                   "--training-run", str(tmp_path / name), "--quiet"])
        assert res.exit_code == 2, (name, res.output)
        assert res.output.count("\n") == 1 and name in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(compile_command, ["--onnx", str(mlp_onnx), "--eval", str(data_files["eval"]),
                                               "--signing-key", str(keys[0]), "--parent", str(data_files["eval"]),
                                               "--quiet"])
    assert res.exit_code == 2 and "not a readable bundle" in res.output
