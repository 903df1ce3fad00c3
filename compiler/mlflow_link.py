"""MLflow as the training side of the lineage (issue 16, optional extra `mlflow`): with
`edgefleet compile --mlflow-run RUN_ID` (tracking URI from MLFLOW_TRACKING_URI) the compile
reads the run (git commit tag, params as hyperparameters, dataset input digests, run URL) into
provenance.training, and afterwards logs each device class's build metrics, gate results and
bundle digests back to that run, with the compile report as a JSON artifact."""

from __future__ import annotations

import os
from typing import Any

from compiler.errors import CompileInputError

INSTALL_HINT = "MLflow lineage needs the mlflow extra: pip install 'edgefleet[mlflow]'"


def _client() -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise CompileInputError(INSTALL_HINT) from None
    return MlflowClient()


def _run_url(run: Any) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return f"{uri or 'mlruns'}#runs/{run.info.run_id}"


def training_from_mlflow(run_id: str) -> dict[str, Any]:
    """The training-run facts of MLflow run `run_id` (compiler.training_run's keys)."""
    client = _client()
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors: one clear line
        raise CompileInputError(f"--mlflow-run {run_id}: cannot read the run from "
                                f"{os.environ.get('MLFLOW_TRACKING_URI') or 'the default tracking store'}: "
                                f"{str(exc).splitlines()[0][:200]}") from None
    tags = run.data.tags
    out: dict[str, Any] = {"mlflow_run_id": run.info.run_id, "run_id": run.info.run_id, "run_url": _run_url(run)}
    if tags.get("mlflow.source.git.commit"):
        out["git_commit"] = tags["mlflow.source.git.commit"]
    if run.data.params:
        out["hyperparameters"] = dict(run.data.params)
    datasets = {d.dataset.name: d.dataset.digest for d in (getattr(run.inputs, "dataset_inputs", None) or [])}
    if datasets:
        out["data_versions"] = datasets
    for key in ("intended_use", "limitations"):
        if tags.get(key):
            out[key] = tags[key]
    return out


def log_build(run_id: str, results: list[Any]) -> None:
    """Log the compile's metrics and report back to the run (edgefleet.<class>.<metric>)."""
    client = _client()
    report = []
    for r in results:
        d = r.to_dict()
        report.append(d)
        prefix = f"edgefleet.{r.device_class}"
        for k, v in (r.metrics or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                client.log_metric(run_id, f"{prefix}.{k}", float(v))
        for k, v in (r.latency or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                client.log_metric(run_id, f"{prefix}.latency.{k}", float(v))
        client.log_metric(run_id, f"{prefix}.passed", 1.0 if r.passed else 0.0)
        if r.bundle_path is not None:
            import hashlib

            client.set_tag(run_id, f"{prefix}.bundle_sha256", hashlib.sha256(r.bundle_path.read_bytes()).hexdigest())
    client.log_dict(run_id, {"builds": report}, "edgefleet/compile_report.json")
