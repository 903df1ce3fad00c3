"""`edgefleet compile` (mounted by the root CLI) and `python -m compiler`.

Exit codes: 0 every build passed its gates, 1 a quality gate failed (the report names it),
2 bad input (a one-line message, no traceback). Only click, rich and this package's light
modules are imported at start-up; torch & co load when a build runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from compiler.config import FORMAT_CHOICES, PRECISION_CHOICES, load_toml, merge, parse_shape
from compiler.errors import CompileInputError
from compiler.evaluate import TASKS
from compiler.quantize_onnx import CALIBRATION_METHODS

EXIT_OK, EXIT_GATE, EXIT_INPUT = 0, 1, 2


@click.command("compile")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="compile.toml with the same keys.")
@click.option("--onnx", help="Source ONNX model file.")
@click.option("--tflite", help="Source TFLite model file (TFLite device classes; re-quantized if float and INT8 wanted).")
@click.option("--torch", "torch_src", help="PyTorch model: module:function returning nn.Module, or a .pt2 file.")
@click.option("--example-input", help="Example input shape for --torch, e.g. 1,64 (default: from the data).")
@click.option("--calib", help="Calibration data (.npz or module:function); default: the eval data.")
@click.option("--eval", "eval_data", help="Evaluation data (.npz: inputs, labels, optional slices).")
@click.option("--device-class", "device_classes", multiple=True, help="Target device class (repeatable).")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), help="Override the device class's format.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), help="Override the device class's precision.")
@click.option("--calibrate-method", type=click.Choice(CALIBRATION_METHODS), help="ONNX static INT8 calibration.")
@click.option("--calibration-samples", type=int, help="Calibration samples used (default 128).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), help="PyTorch to ONNX exporter.")
@click.option("--distill", help="module:make_student: distil the --torch teacher into this student.")
@click.option("--temperature", type=float, show_default="4.0", help="Distillation softmax temperature.")
@click.option("--alpha", type=float, show_default="0.7", help="Distillation weight of the teacher's soft targets.")
@click.option("--epochs", type=int, show_default="30", help="Distillation epochs.")
@click.option("--seed", type=int, show_default="0", help="Random seed (distillation, sampling).")
@click.option("--max-accuracy-drop", type=float, show_default="the device class's budget",
              help="Gate: largest allowed drop of the metric against the reference.")
@click.option("--max-slice-gap-increase", type=float, show_default="the device class's budget",
              help="Gate: largest allowed growth of the gap between the best and worst slice.")
@click.option("--max-size-mb", type=float, show_default="the device class's budget", help="Gate: artifact size.")
@click.option("--max-latency-ms", type=float, show_default="the device class's budget",
              help="Gate: p99 latency measured in the target runtime.")
@click.option("--min-cosine", type=float, show_default="0.98", help="Gate (embedding): worst sample's cosine.")
@click.option("--min-p1-cosine", type=float, show_default="0.99", help="Gate (embedding): 1st-percentile cosine.")
@click.option("--max-p99-error", type=float, show_default="0.25",
              help="Gate (regression): 99th-percentile per-sample RMS error, in reference standard deviations.")
@click.option("--accuracy-control/--no-accuracy-control", default=None,
              help="OpenVINO INT8 with nncf.quantize_with_accuracy_control (default on, classification).")
@click.option("--latency-iterations", type=int, show_default="50", help="Timed runs for the latency gate.")
@click.option("--slice-key", "slices", multiple=True,
              help="Slice key the devices keep outcomes by (repeatable): a request metadata key (region), or "
              "KEY=INDEX / KEY=INPUT[INDEX]: quartile bins of one input column.")
@click.option("--task", type=click.Choice(TASKS), show_default="classification", help="What the metric measures.")
@click.option("--name", show_default="model", help="Model name in the bundle.")
@click.option("--version", type=int, show_default="1", help="Model version (integer, increasing).")
@click.option("--signing-key", type=click.Path(path_type=Path), help="Ed25519 private key (PEM) that signs the bundles.")
@click.option("--out", type=click.Path(path_type=Path), show_default="build", help="Folder for bundles and reports.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Reuse exported/quantized artifacts across runs.")
@click.option("--report-json", type=click.Path(path_type=Path), help="Also write the report as JSON here.")
@click.option("--devices-dir", type=click.Path(path_type=Path), help="Device-class catalogue folder.")
@click.option("--training-run", type=click.Path(path_type=Path),
              help="TOML/JSON of the training run (git commit, data versions, hyperparameters, run URL).")
@click.option("--parent", type=click.Path(path_type=Path), help="Bundle this model was distilled or re-quantized from.")
@click.option("--mlflow-run", help="MLflow run id (MLFLOW_TRACKING_URI): read the training run, log the build back.")
@click.option("--sklearn-pipeline", help="Fitted scikit-learn pipeline (.joblib/.pkl, trusted: a pickle runs code) "
              "shipped in the bundle so devices take raw features.")
@click.option("--preprocess", help="module:function returning a torch preprocess nn.Module shipped in the bundle.")
@click.option("--raw-eval", help="Raw eval rows (CSV with header, or .npz) for the parity gate; derives --eval if unset.")
@click.option("--training-transform", help="module:function, raw columns -> model input: the parity gate's "
              "reference (default: the pipeline itself).")
@click.option("--feature-schema", help="TOML [features.<name>] overrides: unit, min, max, categories, nullable.")
@click.option("--parity-atol", type=float, show_default="1e-4", help="Parity gate: absolute feature tolerance.")
@click.option("--parity-rtol", type=float, show_default="1e-4", help="Parity gate: relative feature tolerance.")
@click.option("--profile-on", help="Gate latency on an enrolled device of this class: the fleet runs each candidate "
              "there (EDGEFLEET_URL, EDGEFLEET_TOKEN); the device installs nothing.")
@click.option("--profile-runs", type=int, show_default="50", help="--profile-on: timed inferences on the device.")
@click.option("--profile-timeout", "profile_timeout_s", type=float, show_default="300",
              help="--profile-on: seconds to wait for each candidate's result.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def compile_command(ctx: click.Context, config_path: Path | None, quiet: bool, **flags: Any) -> None:
    """Compile a trained model into one signed, gated bundle per device class."""
    rename = {"torch_src": "torch", "eval_data": "eval", "fmt": "format"}
    given = {rename.get(k, k): v for k, v in flags.items()
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT and v not in (None, ())}
    for many in ("device_classes", "slices"):
        if many in given:
            given[many] = list(given[many])
    if quiet:
        given["progress"] = False
    try:
        if "example_input" in given:
            given["example_input"] = parse_shape(given["example_input"])
        cfg = merge(load_toml(config_path) if config_path else {}, given)
        from compiler.pipeline import compile_model
        from compiler.report import print_report

        results = compile_model(cfg)
    except CompileInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_INPUT))  # --profile-on: a timeout is a failed check (1)
    print_report(results)
    if not all(r.passed for r in results):
        names = sorted({g for r in results for g in r.failed_gates})
        click.echo(f"quality gate failed: {', '.join(names)}", err=True)
        sys.exit(EXIT_GATE)
    sys.exit(EXIT_OK)


def main() -> None:
    compile_command(prog_name="python -m compiler")
