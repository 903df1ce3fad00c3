"""Glue between a build and its raw-input contract: prepare it before the build, attach it per bundle.

`prepare(cfg)` loads the raw eval rows and the pipeline (`--sklearn-pipeline` or `--preprocess`),
and, when no `--eval` is given, derives the eval tensors by running the training pipeline on the
raw rows, so the quality gates and the parity gate see the same samples. `attach(...)` runs the
parity gate on the chosen artifact and, when it passes, adds `preprocess.onnx` and the manifest's
`preprocess` block (schema, pipeline hash, measured parity) to the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileInputError
from compiler.gates import GateResult
from compiler.preprocess import (
    PREPROCESS_FILE,
    Preprocess,
    RawColumns,
    apply_overrides,
    from_sklearn,
    from_torch,
    load_raw_rows,
    load_schema_overrides,
    load_sklearn_pipeline,
    preprocess_manifest,
    split_labels,
)

PLACEHOLDER_OUTPUT = "features"
OPSET = 18


@dataclass
class RawContract:
    pre: Preprocess
    raw: RawColumns
    atol: float
    rtol: float
    labels: np.ndarray | None = None  # the raw rows' labels and slices: raw-feature importance (compiler/explain.py)
    slices: np.ndarray | None = None


def prepare(cfg: Any) -> RawContract | None:
    """None when the build has no training pipeline; sets cfg.eval from the raw rows if unset."""
    if not (cfg.sklearn_pipeline or cfg.preprocess):
        if cfg.raw_eval or cfg.training_transform:
            raise CompileInputError("--raw-eval/--training-transform need --sklearn-pipeline or --preprocess")
        return None
    if cfg.sklearn_pipeline and cfg.preprocess:
        raise CompileInputError("give one training pipeline: --sklearn-pipeline or --preprocess, not both")
    if not cfg.raw_eval:
        raise CompileInputError("--raw-eval rows (CSV or .npz) are required with a training pipeline: "
                                "the parity gate runs both sides on them")
    raw, labels, slices = split_labels(load_raw_rows(cfg.raw_eval))
    reference = None
    if cfg.training_transform:
        from compiler.loading import load_callable

        fn = load_callable(cfg.training_transform, "--training-transform")

        def reference(cols: RawColumns) -> np.ndarray:
            return np.asarray(fn(cols), dtype=np.float64)
    if cfg.sklearn_pipeline:
        pipe, sha = load_sklearn_pipeline(cfg.sklearn_pipeline)
        pre = from_sklearn(pipe, sha, raw, PLACEHOLDER_OUTPUT, OPSET)
        if reference is not None:
            pre.reference = reference
    else:
        from compiler.loading import load_callable

        module = load_callable(str(cfg.preprocess), "--preprocess")() if isinstance(cfg.preprocess, str) \
            else cfg.preprocess
        pre = from_torch(module, raw, PLACEHOLDER_OUTPUT, OPSET, reference)
    pre.schema = apply_overrides(pre.schema, load_schema_overrides(cfg.feature_schema), str(cfg.feature_schema))
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64 if cfg.task == "classification" else np.float32)
    slices = None if slices is None else np.asarray(slices).astype(str)
    if cfg.eval is None:
        data: dict[str, Any] = {"inputs": pre.reference(raw).astype(np.float32)}
        if labels is not None:
            data["labels"] = labels
        if slices is not None:
            data["slices"] = slices
        cfg.eval = data
    return RawContract(pre, raw, float(cfg.parity_atol), float(cfg.parity_rtol), labels, slices)


def _rename_output(pre: Preprocess, name: str) -> bytes:
    import onnx

    model = onnx.load_from_string(pre.onnx_bytes)
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    model.graph.output[0].name = name
    return model.SerializeToString()


def attach(contract: RawContract, art: Any, fields: dict[str, Any], fp32_onnx: Path, threads: int,
           work: Path) -> GateResult:
    """Run the parity gate on `art`; on a pass add preprocess.onnx and the manifest block in place."""
    from dataclasses import replace

    from compiler.parity import check_parity
    from compiler.runtimes import OnnxRunner, open_runner, predict

    name = fields["inputs"][0]["name"]
    pre = replace(contract.pre, onnx_bytes=_rename_output(contract.pre, name), output_name=name)
    want = pre.reference(contract.raw).astype(np.float32)
    reference_outputs = predict(OnnxRunner(fp32_onnx), {OnnxRunner(fp32_onnx).input_names[0]: want})
    runner = open_runner(art.fmt, art.entry_path, threads, fields)

    def run_model(x: dict[str, np.ndarray]) -> np.ndarray:
        return predict(runner, x)

    parity = check_parity(pre, contract.raw, atol=contract.atol, rtol=contract.rtol, run_model=run_model,
                          reference_outputs=reference_outputs)
    if parity.gate.passed:
        work.mkdir(parents=True, exist_ok=True)
        graph = work / PREPROCESS_FILE
        graph.write_bytes(pre.onnx_bytes)
        art.files[PREPROCESS_FILE] = graph
        fields["preprocess"] = preprocess_manifest(pre, parity.to_manifest(contract.atol, contract.rtol))
        from compiler.explain import explain_raw_inputs  # importance by raw feature name (issue 15)

        explain_raw_inputs(fields, pre.column_names, pre.raw_feature_of, want, contract.labels, contract.slices,
                           lambda b: predict(runner, {name: b.astype(np.float32, copy=False)}, batch=256))
    return parity.gate
