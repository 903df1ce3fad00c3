"""Issue 16, MLflow lineage: with MLFLOW_TRACKING_URI (a local SQLite store here) `compile
--mlflow-run` reads the run into provenance.training, logs the build's metrics and report back
to the run, and the fleet's model card of the uploaded version shows the run."""

from __future__ import annotations

import pytest

from agent.bundle import verify_bundle
from agent.keys import Keyring

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


def test_compile_reads_and_writes_the_mlflow_run(build, mlp_onnx, data_files, keys, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # MLflow puts run artifacts under ./mlruns with a SQLite tracking store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        mlflow.log_params({"lr": 0.001, "epochs": 30})
        mlflow.set_tags({"mlflow.source.git.commit": "3f2c1a9", "intended_use": "line-scanner digits"})
    run_id = run.info.run_id
    (tmp_path / "run.toml").write_text('limitations = "printed digits only"\n')
    [res] = build(onnx=str(mlp_onnx), eval=str(data_files["eval"]), device_classes=["x86-64-generic"],
                  precision="fp32", name="digits", version=1, mlflow_run=run_id, training_run=tmp_path / "run.toml")
    assert res.passed
    manifest = verify_bundle(res.bundle_path, Keyring.from_files([keys[1]])).manifest
    tr = manifest["provenance"]["training"]
    assert tr["mlflow_run_id"] == run_id and tr["git_commit"] == "3f2c1a9"
    assert tr["hyperparameters"] == {"lr": "0.001", "epochs": "30"} and tr["limitations"] == "printed digits only"

    client = mlflow.MlflowClient()
    logged = client.get_run(run_id).data.metrics
    assert logged["edgefleet.x86-64-generic.passed"] == 1.0 and "edgefleet.x86-64-generic.size_bytes" in logged
    assert [a.path for a in client.list_artifacts(run_id, "edgefleet")] == ["edgefleet/compile_report.json"]

    # the fleet's model card of that version shows the run
    from sqlmodel import Session, SQLModel, create_engine

    import fleet.models  # noqa: F401
    from fleet.catalogue.card_markdown import to_markdown
    from fleet.catalogue.model_card import build_card
    from fleet.models import ModelVersion

    engine = create_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as db:
        db.add(ModelVersion(name="digits", version=1, device_class="x86-64-generic", format="onnx", precision="fp32",
                            manifest_sha256="0" * 64, bundle_sha256="1" * 64, size=1, artifact_path="x",
                            manifest=manifest))
        db.commit()
        card = build_card(db, "digits", 1)
    assert card["intended_use"] == "line-scanner digits" and card["limitations"] == "printed digits only"
    slices = card["slices"]["x86-64-generic"]["slices"]
    assert slices and set(slices) == set(card["slices"]["x86-64-generic"]["reference"])  # per-slice results
    md = to_markdown(card)
    first = sorted(slices)[0]
    assert f"| x86-64-generic | {first} |" in md.split("## Per-slice results")[1]
    assert f"mlflow_run_id: {run_id}" in md and "git_commit: 3f2c1a9" in md and "lr=0.001" in md
