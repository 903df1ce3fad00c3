"""TFLite files as sources (issue 13, seen 6 / item 7): `compile --tflite`, `bundle build` reading
specs from the model file, and a .tflite given to --onnx named for what it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from compiler_zoo import calib_set, eval_set

from agent.bundle import verify_bundle
from agent.cli_bundle import bundle
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.keys import Keyring
from compiler.cli import compile_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def float_tflite(mlp, digits, tmp_path_factory) -> Path:
    from compiler.convert_tflite import TFLiteConfig, convert_tflite

    dst = tmp_path_factory.mktemp("tfl") / "digits.tflite"
    return convert_tflite(mlp, {"input": digits["x_test"][:2]}, dst, TFLiteConfig(precision="fp32"))


def _serve(bundle_path: Path, keys: tuple[Path, Path], tmp: Path, device_class: str, request: dict) -> dict:
    a = Agent(AgentConfig(device_id="tfl", state_dir=str(tmp / "agent"), build_keys=[str(keys[1])],
                          device_class=device_class)).start()
    try:
        a.install(bundle_path, allow_new_name=True)  # the warm-up inference runs on the manifest's specs
        return a.predict(request)
    finally:
        a.stop()


def test_onnx_flag_given_a_tflite_file_says_so(float_tflite, data_files, keys, tmp_path) -> None:
    r = CliRunner().invoke(compile_command, ["--onnx", str(float_tflite), "--eval", str(data_files["eval"]),
                                             "--signing-key", str(keys[0]), "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 2
    assert "this is a TFLite flatbuffer, not ONNX; use --tflite" in r.output
    assert "Wire format" not in r.output and "Traceback" not in r.output


def test_bundle_build_reads_tflite_specs_from_the_file(float_tflite, keys, digits, tmp_path) -> None:
    out = tmp_path / "b.bundle"
    r = CliRunner().invoke(bundle, ["build", "--model", str(float_tflite), "--name", "digits", "--version", "1",
                                    "--device-class", "arm64-cortex-a", "--key", str(keys[0]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = verify_bundle(out, Keyring.from_files([keys[1]])).manifest
    assert m["inputs"] == [{"name": "args_0", "dtype": "float32", "shape": [1, 64], "batch_axis": 0}]
    assert m["runtime_config"]["tflite"]["inputs"][0]["tensor"] == "serving_default_args_0"
    served = _serve(out, keys, tmp_path, "arm64-cortex-a", {"args_0": digits["x_test"][:5]})
    assert next(iter(served.values())).shape == (5, 10)


def test_bundle_build_refuses_a_model_without_readable_specs(tmp_path, keys) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(200))
    onnx_named_tflite = tmp_path / "model.onnx"
    onnx_named_tflite.write_bytes(broken.read_bytes())
    for path, message in ((broken, "cannot read tensor specs from broken.tflite"),
                          (onnx_named_tflite, "is a TFLite flatbuffer, not onnx; pass --format tflite")):
        r = CliRunner().invoke(bundle, ["build", "--model", str(path), "--name", "m", "--version", "1",
                                        "--device-class", "arm64-cortex-a", "--key", str(keys[0]),
                                        "--out", str(tmp_path / "x.bundle"), *(["--format", "onnx"]
                                                                              if path.suffix == ".onnx" else [])])
        assert r.exit_code != 0 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
        assert not (tmp_path / "x.bundle").exists()


def test_compile_tflite_source_requantizes_a_float_model(float_tflite, digits, keys, tmp_path) -> None:
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model

    ev = eval_set(digits)
    (r,) = compile_model(CompileConfig(tflite=str(float_tflite), calib=calib_set(digits), eval=ev,
                                       device_classes=["arm64-cortex-a"], signing_key=keys[0], out=tmp_path / "o",
                                       progress=False, latency_iterations=5))
    assert r.passed and r.precision == "int8", r.to_dict()
    m = verify_bundle(r.bundle_path, Keyring.from_files([keys[1]])).manifest
    assert m["model"]["precision"] == "int8"
    first = m["provenance"]["lineage"][0]
    assert first["pass"] == "tflite-source" and first["config"]["tool"] == "ai_edge_quantizer"
    assert m["runtime_config"]["tflite"]["inputs"][0]["dtype"] == "int8"
    served = _serve(r.bundle_path, keys, tmp_path, "arm64-cortex-a", {"args_0": ev["inputs"][:50]})
    assert (next(iter(served.values())).argmax(1) == ev["labels"][:50]).mean() > 0.85
    # An INT8 TFLite source is bundled as is: same bytes, never quantized twice.
    vb = verify_bundle(r.bundle_path, Keyring.from_files([keys[1]]), unpack_to=tmp_path / "unpacked")
    int8_src = vb.path / "model.tflite"
    (again,) = compile_model(CompileConfig(tflite=str(int8_src), calib=calib_set(digits), eval=ev,
                                           device_classes=["mcu-class-int8"], signing_key=keys[0],
                                           out=tmp_path / "o2", progress=False, latency_iterations=5))
    assert again.passed and again.precision == "int8", again.to_dict()
    vb2 = verify_bundle(again.bundle_path, Keyring.from_files([keys[1]]), unpack_to=tmp_path / "unpacked2")
    assert (vb2.path / "model.tflite").read_bytes() == int8_src.read_bytes()
    assert vb2.manifest["provenance"]["lineage"][0]["config"] == {"tool": "copy", "source_precision": "int8"}
    assert vb2.manifest["metrics"]["drop"] == 0.0  # the source is its own reference


def test_compile_tflite_source_for_a_non_tflite_class_is_refused(float_tflite, data_files, keys, tmp_path) -> None:
    r = CliRunner().invoke(compile_command, ["--tflite", str(float_tflite), "--eval", str(data_files["eval"]),
                                             "--device-class", "x86-64-generic", "--signing-key", str(keys[0]),
                                             "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 2 and "a --tflite source is bundled for TFLite device classes only" in r.output
