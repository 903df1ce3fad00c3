"""Passes, formats and gates as data: keys derived from dataclass fields (a new setting is keyed
the moment it is declared), format plugins in one registry, compiler gates in the shared shape."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from agent.device_classes import FORMATS as BUNDLE_FORMATS
from compiler.config import FORMAT_CHOICES, PRECISION_CHOICES, CompileConfig
from compiler.convert_openvino import OpenVINOConfig
from compiler.errors import CompileInputError
from compiler.evaluate import quality
from compiler.formats import FORMATS, get_format
from compiler.gates import (
    COMPILER_GATES,
    LATENCY_GATE_NAMES,
    QUALITY_GATE_NAMES,
    Budgets,
    GateResult,
    Latency,
    check_gates,
)
from compiler.passes import MANIFEST_PRECISION, PassConfig
from compiler.provenance import json_sha256
from compiler.quantize_onnx import DynamicInt8, Fp16, StaticInt8
from edgefleet.gates import FAIL, PASS, GateVerdict, UnknownGate, overall

ROOT = Path(__file__).resolve().parents[2]


def _key(cfg: CompileConfig) -> str:
    return json_sha256(cfg.hyperparameters())


def _other_value(value: Any) -> Any:
    """A different value of the same kind, to prove a field moves the key."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return (*value, 7)
    return f"{value}-changed"


def test_every_compile_setting_is_keyed_or_says_why_not() -> None:
    keyed = CompileConfig().hyperparameters()
    for f in dataclasses.fields(CompileConfig):
        why = f.metadata.get("unkeyed")
        assert (f.name in keyed) != bool(why) or f.metadata.get("only_with"), f.name
        if why:
            assert len(why) > 10, f"{f.name}: say why it stays out of the cache key"


def test_changing_any_keyed_setting_changes_the_cache_key() -> None:
    base = CompileConfig(distill="zoo:student")
    for name in base.hyperparameters():
        moved = dataclasses.replace(base, **{name: _other_value(getattr(base, name))})
        assert _key(moved) != _key(base), name
    # Unkeyed settings (where results go, how latency is measured) leave it alone.
    assert _key(dataclasses.replace(base, out=Path("elsewhere"), latency_iterations=3, progress=False)) == _key(base)
    # The student's training settings count only when there is a student.
    plain = CompileConfig()
    assert _key(dataclasses.replace(plain, epochs=99)) == _key(plain)
    assert _key(dataclasses.replace(base, epochs=99)) != _key(base)


def test_a_new_setting_is_keyed_without_touching_any_list() -> None:
    """The bug this replaces: a setting left off a hand-kept list gave stale cache hits."""
    Extended = dataclasses.make_dataclass("Extended", [("slice_keys", tuple, dataclasses.field(default=()))],
                                          bases=(CompileConfig,))
    a, b = Extended(), Extended(slice_keys=("region",))
    assert a.hyperparameters()["slice_keys"] == [] and b.hyperparameters()["slice_keys"] == ["region"]
    assert _key(a) != _key(b)


@dataclasses.dataclass(frozen=True)
class _Toy(PassConfig):
    PASS: ClassVar[str] = "toy"
    TOOL: ClassVar[str | None] = "toolkit"
    level: int = 1
    names: tuple[str, ...] = ("a",)


def test_a_pass_config_is_its_lineage_record_and_its_key(tmp_path: Path) -> None:
    src, out = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(b"in")
    out.write_bytes(b"out")
    cfg = _Toy(level=2)
    rec = cfg.record(src, out, {"took_ms": 3})
    assert rec["pass"] == "toy" and rec["config"] == {"tool": "toolkit", "level": 2, "names": ["a"], "took_ms": 3}
    assert rec["input_sha256"] != rec["output_sha256"] and len(rec["input_sha256"]) == 64
    assert cfg.key("x") == _Toy(level=2).key("x")
    assert len({cfg.key("x"), cfg.key("y"), _Toy(level=3).key("x"), _Toy(names=("b",)).key("x")}) == 4
    Wider = dataclasses.make_dataclass("Wider", [("extra", int, dataclasses.field(default=0))], bases=(_Toy,),
                                       frozen=True)
    assert Wider().lineage()["extra"] == 0 and Wider(extra=1).key("x") != Wider().key("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.level = 5  # type: ignore[misc]


def test_each_onnx_precision_pass_records_only_its_own_settings() -> None:
    static = StaticInt8(calibration_samples=64, nodes_to_exclude=("n1",)).lineage()
    assert static["tool"] == "onnxruntime.quantization" and static["mode"] == "static"
    assert static["calibration_samples"] == 64 and static["nodes_to_exclude"] == ["n1"] and static["per_channel"]
    assert set(DynamicInt8().lineage()) == {"tool", "mode", "per_channel", "weight_type", "reduce_range",
                                            "nodes_to_exclude"}
    assert static["reduce_range"] is False and StaticInt8(reduce_range=True).key("m") != StaticInt8().key("m")
    assert Fp16().lineage() == {"tool": "onnxruntime.quantization", "mode": "fp16", "keep_io_types": True}
    assert OpenVINOConfig(max_drop=0.01).key("m") != OpenVINOConfig(max_drop=0.02).key("m")


def test_formats_are_one_registry_matching_the_bundle_formats() -> None:
    assert FORMATS.names() == BUNDLE_FORMATS == FORMAT_CHOICES
    assert set(PRECISION_CHOICES) == {"auto", *(p for f in FORMATS for p in f.precisions)}
    for f in FORMATS:
        assert set(f.precisions) <= set(MANIFEST_PRECISION), f.name
        assert set(f.auto_chain(True)) <= set(f.precisions) and set(f.auto_chain(False)) <= set(f.precisions)
    assert get_format("onnx").auto_chain(True)[0] == "dynamic-int8" and get_format("onnx").auto_chain(False)[0] == "int8"
    with pytest.raises(CompileInputError, match="unknown format 'coreml'; use one of onnx, openvino, tflite"):
        get_format("coreml")
    with pytest.raises(CompileInputError, match="precision 'mixed' is not available for format 'onnx'"):
        get_format("onnx").check_precision("mixed")


# Files others own that still spell a format name (each is a job for a plugin attribute).
_STILL_SPELLED = {"candidates.py", "inputs.py", "schemes.py", "target.py", "tflite_source.py",
                  "architecture.py",  # check_quantized's per-format INT8 count: a plugin method to be
                  "provenance.py"}  # provenance: package names (onnx, openvino), not formats


def test_format_names_are_spelled_only_in_the_format_plugins() -> None:
    spelled = set()
    for path in (ROOT / "compiler").rglob("*.py"):
        if "formats" in path.parts or path.name in _STILL_SPELLED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in FORMATS:
                spelled.add(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not spelled


def _classification(n_wrong: int) -> Any:
    ref = np.eye(4)[[0, 1, 2, 3] * 5] * 5
    out = ref.copy()
    out[:n_wrong] = np.eye(4)[3] * 5
    labels = np.array([0, 1, 2, 3] * 5)
    return quality("classification", out, ref, labels, np.array(["a", "b"] * 10))


def test_compiler_gates_are_a_registry_of_shared_verdicts() -> None:
    assert COMPILER_GATES.names() == ("max-accuracy-drop", "max-slice-gap-increase", "max-slice-gap",
                                      "min-slice-accuracy", "min-cosine", "min-p1-cosine", "max-p99-error",
                                      "max-size-mb", "max-latency-ms", "min-speedup")
    assert "max-size-mb" not in QUALITY_GATE_NAMES and LATENCY_GATE_NAMES == {"max-latency-ms", "min-speedup"}
    budgets = Budgets(max_accuracy_drop=0.1, max_slice_gap_increase=0.5, max_size_mb=1, max_latency_ms=5)
    results = check_gates(_classification(3), 1000, 1.0, budgets)
    assert [g.gate for g in results] == ["max-accuracy-drop", "max-slice-gap-increase", "max-size-mb",
                                         "max-latency-ms"]
    drop = results[0]
    assert isinstance(drop, GateVerdict) and drop.status == FAIL and not drop.passed
    assert drop.budget == drop.threshold == 0.1 and overall(results) == FAIL
    assert drop.to_dict() == {"gate": "max-accuracy-drop", "value": drop.value, "budget": 0.1, "passed": False,
                              "detail": drop.detail}  # the report's and the manifest's shape
    assert overall(check_gates(_classification(0), 1000, 1.0, budgets)) == PASS
    with pytest.raises(UnknownGate, match="unknown compiler gate 'max-cost'"):
        COMPILER_GATES.select(["max-cost"])


def test_off_target_latency_is_a_speedup_gate_or_not_gated() -> None:
    budgets = Budgets(max_accuracy_drop=0.5, max_slice_gap_increase=0.5, max_size_mb=1, max_latency_ms=0.001)
    q = _classification(0)
    proxy = {g.gate: g for g in check_gates(q, 10, Latency(9.0, on_target=False, speedup=0.5, why_not="arm"), budgets)}
    assert "max-latency-ms" not in proxy and not proxy["min-speedup"].passed and proxy["min-speedup"].budget == 0.9
    blind = {g.gate: g for g in check_gates(q, 10, Latency(9.0, on_target=False, why_not="arm"), budgets)}
    assert "min-speedup" not in blind and blind["max-latency-ms"].passed and "not gated" in blind["max-latency-ms"].detail
    assert isinstance(GateResult("parity", 0.0, 1e-4, True, "ok"), GateVerdict)


def _bundle_files(path: Path) -> tuple[bytes, list[dict[str, Any]]]:
    import json
    import tarfile

    from agent.bundle_build import PAYLOAD_DIR

    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        model = tar.extractfile(f"{PAYLOAD_DIR}/{manifest['entrypoint']}").read()  # type: ignore[union-attr]
        return model, manifest["provenance"]["lineage"]


@pytest.mark.slow
def test_a_pass_with_the_same_key_runs_once_per_build(build, mlp, digits, monkeypatch) -> None:
    """Two classes that want the same ONNX INT8 pass share its output (the key says it is the same
    pass on the same inputs); the bundles carry the same model and the same lineage record. (Not
    x86-64-generic: its 7-bit weights, reduce_range, make its pass another one.)"""
    from compiler_zoo import calib_set, eval_set

    import compiler.quantize_onnx as qo

    calls: list[Path] = []
    real = qo.quantize_static_int8

    def counted(src, dst, calib, cfg):  # type: ignore[no-untyped-def]
        calls.append(dst)
        return real(src, dst, calib, cfg)

    monkeypatch.setattr(qo, "quantize_static_int8", counted)
    a, b = build(torch=mlp, calib=calib_set(digits), eval=eval_set(digits), format="onnx", precision="int8",
                 device_classes=["x86-avx512-vnni", "nvidia-jetson"], max_accuracy_drop=0.01)
    assert a.passed and b.passed and len(calls) == 1
    (model_a, lineage_a), (model_b, lineage_b) = _bundle_files(a.bundle_path), _bundle_files(b.bundle_path)
    quantize = [next(p for p in lin if p["pass"] == "quantize") for lin in (lineage_a, lineage_b)]
    assert model_a == model_b and quantize[0] == quantize[1]
    assert [p["pass"] for p in lineage_b] == ["export", "quantize", "evaluate"]  # one evaluate: its own


def test_reduce_range_is_a_device_class_setting_the_onnx_int8_passes_take(tmp_path: Path) -> None:
    """AVX2 without VNNI saturates full-range U8S8 (digits regression p99 error 0.35 vs 0.04 with
    7-bit weights): x86-64-generic asks for 7-bit weights, VNNI does not, other classes default off."""
    from agent.device_classes import CatalogueError, get_device_class, parse_device_class
    from compiler.data import load_dataset
    from compiler.passes import PassContext

    generic, vnni = get_device_class("x86-64-generic"), get_device_class("x86-avx512-vnni")
    assert generic.reduce_range and not vnni.reduce_range and not get_device_class("nvidia-jetson").reduce_range
    assert generic.to_dict()["model"]["reduce_range"] is True
    doc = generic.to_dict()
    doc["model"]["reduce_range"] = "yes"
    with pytest.raises(CatalogueError, match=r"field 'model.reduce_range' must be true or false, got 'yes'"):
        parse_device_class(doc, "x.toml")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    data = load_dataset({"x": np.zeros((4, 3), np.float32)})
    ctx = PassContext(model, None, None, {}, data, data, False, reduce_range=generic.reduce_range)
    for fmt, precision in (("onnx", "int8"), ("onnx", "dynamic-int8"), ("openvino", "int8")):
        step = get_format(fmt).step(precision, ctx)
        assert step is not None and step.config.lineage()["reduce_range"] is True
        other = get_format(fmt).step(precision, dataclasses.replace(ctx, reduce_range=False))
        assert other is not None and step.key != other.key, (fmt, precision)
