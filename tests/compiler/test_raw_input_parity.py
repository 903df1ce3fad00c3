"""The raw-input contract and the parity gate (issue 15, items 1, 2 and 6).

A tabular model trained behind a scikit-learn pipeline (imputer + scaler + one-hot) and an image
model behind a torch normalisation are compiled with their training pipelines; the bundle is
installed in a real agent, which is fed raw features by name and must answer what the training
pipeline + source model answer (max abs diff recorded). A pipeline whose serving side differs
from training fails the parity gate, naming the feature and the row; schema violations are
counted per feature in the agent's telemetry.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from agent.spec_check import InputError
from compiler.config import CompileConfig
from compiler.pipeline import compile_model

pytestmark = pytest.mark.slow
NUMERIC = ["mean radius", "mean texture", "mean smoothness", "worst area"]


def _tabular() -> dict[str, Any]:
    """Breast cancer data with a derived categorical column ('clinic') and missing values."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    cols = {n: d.data[:, list(d.feature_names).index(n)].astype(np.float64) for n in NUMERIC}
    tex = cols["mean texture"]
    cols["clinic"] = np.where(tex < 17, "oslo", np.where(tex < 21, "bergen", "tromso")).astype(object)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.target))
    cols = {k: v[order] for k, v in cols.items()}
    y = d.target[order].astype(np.int64)
    cols["mean smoothness"][rng.random(len(y)) < 0.05] = np.nan  # the imputer's job
    return {"cols": cols, "y": y, "n_train": 400}


def _fit_pipeline(frame: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    return ColumnTransformer([("num", num, NUMERIC),
                              ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["clinic"])]
                             ).fit(frame)


def _train_mlp(x: np.ndarray, y: np.ndarray) -> Any:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def _write_csv(path: Path, cols: dict[str, np.ndarray], labels: np.ndarray) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*cols, "labels"])
        for i in range(len(labels)):
            w.writerow([("" if isinstance(v[i], float) and np.isnan(v[i]) else v[i]) for v in cols.values()]
                       + [int(labels[i])])
    return path


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import joblib
    import pandas as pd
    import torch

    d = _tabular()
    tmp = tmp_path_factory.mktemp("tabular")
    n = d["n_train"]
    train = pd.DataFrame({k: v[:n] for k, v in d["cols"].items()})
    pipe = _fit_pipeline(train)
    model = _train_mlp(pipe.transform(train), d["y"][:n])
    joblib.dump(pipe, tmp / "pipeline.joblib")
    evc = {k: v[n:] for k, v in d["cols"].items()}
    with torch.no_grad():
        expected = model(torch.from_numpy(pipe.transform(pd.DataFrame(evc)).astype(np.float32))).numpy()
    return {"pipe": pipe, "model": model, "tmp": tmp, "eval": evc, "y": d["y"][n:], "expected": expected,
            "csv": _write_csv(tmp / "eval.csv", evc, d["y"][n:])}


def _compile(t: dict[str, Any], keys: tuple[Path, Path], out: str, **kw: Any) -> list[Any]:
    return compile_model(CompileConfig(torch=t["model"], raw_eval=str(t["csv"]), signing_key=keys[0],
                                       out=t["tmp"] / out, progress=False, latency_iterations=5,
                                       accuracy_control=False, name="tabular", **kw))


def _agent(tmp: Path, keys: tuple[Path, Path], name: str) -> Agent:
    return Agent(AgentConfig(device_id=name, state_dir=str(tmp / name), build_keys=[str(keys[1])],
                             device_class="x86-64-generic")).start()


def _record(key: str, value: Any) -> None:
    print(f"measured {key} = {value:.3g}")  # pytest -s shows the measured max abs diff


@pytest.fixture(scope="module")
def tabular_bundle(tabular: dict[str, Any], keys: tuple[Path, Path]) -> Any:
    (r,) = _compile(tabular, keys, "ok", sklearn_pipeline=str(tabular["tmp"] / "pipeline.joblib"),
                    precision="fp32", feature_schema=None)
    assert r.passed, r.to_dict()
    return r


def test_sklearn_pipeline_ships_in_the_bundle_and_raw_rows_match_training(tabular, tabular_bundle, keys,
                                                                           tmp_path) -> None:
    a = _agent(tmp_path, keys, "raw-tab")
    try:
        a.install(tabular_bundle.bundle_path, allow_new_name=True)
        m = a.predictor.active.manifest
        block = m["preprocess"]
        assert block["kind"] == "sklearn" and len(block["pipeline_sha256"]) == 64
        schema = {f["name"]: f for f in block["features"]}
        assert schema["clinic"]["categories"] == ["bergen", "oslo", "tromso"]
        assert schema["mean smoothness"]["nullable"] is True and "min" in schema["worst area"]
        assert block["parity"]["feature_max_abs_diff"] < 1e-4
        ev = tabular["eval"]
        rows = [{k: (None if isinstance(v[i], float) and np.isnan(v[i]) else
                     (float(v[i]) if k != "clinic" else str(v[i]))) for k, v in ev.items()}
                for i in range(len(tabular["y"]))]
        out_name = m["outputs"][0]["name"]
        served = np.concatenate([a.predict(rows[j:j + 32])[out_name] for j in range(0, len(rows), 32)])
        one = a.predict(rows[0])[out_name]  # one row as a mapping of scalars
    finally:
        a.stop()
    diff = float(np.abs(served - tabular["expected"]).max())
    _record("tabular_sklearn_fp32_max_abs_diff", diff)
    assert served.shape == tabular["expected"].shape
    assert diff < 1e-4
    np.testing.assert_allclose(one[0], served[0], atol=1e-6)


def test_schema_violations_are_counted_per_feature_in_telemetry(tabular, tabular_bundle, keys, tmp_path) -> None:
    a = _agent(tmp_path, keys, "dq-tab")
    try:
        a.install(tabular_bundle.bundle_path, allow_new_name=True)
        good = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.09, "worst area": 800.0,
                "clinic": "oslo"}
        a.predict(good)
        a.predict([{**good, "clinic": "paris"}, {**good, "worst area": 1e6}, {**good, "mean smoothness": None}])
        a.predict({**good, "clinic": "paris"})
        with pytest.raises(InputError, match="wrong_name"):
            a.predict({**good, "wrong_name": 1.0})
        with pytest.raises(InputError, match="mean radius"):
            a.predict({**good, "mean radius": "big"})
        payloads = a.telemetry.close_window()
    finally:
        a.stop()
    p = next(p for p in payloads if p["model"]["role"] == "active")
    assert p["data_quality"] == {"clinic": {"unknown_category": 2}, "mean smoothness": {"missing": 1},
                                 "worst area": {"out_of_range": 1}}
    assert p["errors"]["invalid_input"] == 2
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "telemetry.schema.json").read_text())
    jsonschema.Draft202012Validator({**schema, "$ref": "#/$defs/telemetry"}).validate(p)


def test_skewed_training_pipeline_fails_the_parity_gate_naming_the_feature(tabular, keys, monkeypatch) -> None:
    """Training log-scaled 'worst area' in its own code; the pipeline shipped to devices does not."""
    pipe = tabular["pipe"]
    import pandas as pd

    def skewed(cols: dict[str, np.ndarray]) -> np.ndarray:
        frame = pd.DataFrame({k: cols[k] for k in [*NUMERIC, "clinic"]})
        out = pipe.transform(frame)
        out[:, NUMERIC.index("worst area")] *= 1.5
        return out

    import types

    mod = types.ModuleType("skew_training_code")
    mod.transform = skewed  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "skew_training_code", mod)
    (r,) = _compile(tabular, keys, "skew", sklearn_pipeline=str(tabular["tmp"] / "pipeline.joblib"),
                    precision="fp32", training_transform="skew_training_code:transform")
    assert not r.passed and r.bundle_path is None
    assert r.failed_gates == ["parity"]
    gate = next(g for g in r.gates if g["gate"] == "parity")
    assert "feature 'worst area'" in gate["detail"] and "row " in gate["detail"], gate["detail"]


class Normalize:
    def __new__(cls) -> Any:
        import torch

        class Norm(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return (x / 16.0 - 0.3) / 0.4

        return Norm()


@pytest.fixture(scope="module")
def image_case(digits: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    raw_x = (digits["x_train"] * 16.0).reshape(-1, 1, 8, 8).astype(np.float32)  # raw pixels 0..16
    norm = Normalize()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt = norm(torch.from_numpy(raw_x))
    yt = torch.from_numpy(digits["y_train"].astype(np.int64))
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    ex = (digits["x_test"] * 16.0).reshape(-1, 1, 8, 8).astype(np.float32)[:200]
    tmp = tmp_path_factory.mktemp("image")
    np.savez(tmp / "raw.npz", image=ex, labels=digits["y_test"][:200].astype(np.int64))
    with torch.no_grad():
        expected = model(norm(torch.from_numpy(ex))).numpy()
    return {"model": model, "norm": norm, "raw": tmp / "raw.npz", "x": ex, "expected": expected, "tmp": tmp}


def test_torch_normalisation_ships_in_the_bundle(image_case, keys, tmp_path) -> None:
    (r,) = compile_model(CompileConfig(torch=image_case["model"], preprocess=image_case["norm"],
                                       raw_eval=str(image_case["raw"]), signing_key=keys[0],
                                       out=image_case["tmp"] / "out", progress=False, latency_iterations=5,
                                       accuracy_control=False, name="image", precision="fp32"))
    assert r.passed, r.to_dict()
    a = _agent(tmp_path, keys, "raw-img")
    try:
        a.install(r.bundle_path, allow_new_name=True)
        m = a.predictor.active.manifest
        assert m["preprocess"]["kind"] == "torch"
        assert m["preprocess"]["features"][0]["shape"] == [1, 8, 8]
        served = a.predict({"image": image_case["x"]})[m["outputs"][0]["name"]]
    finally:
        a.stop()
    diff = float(np.abs(served - image_case["expected"]).max())
    _record("image_torch_fp32_max_abs_diff", diff)
    assert diff < 1e-4


def test_local_server_takes_raw_features_as_json_and_binary(tabular, tabular_bundle, keys, tmp_path) -> None:
    import socket
    import urllib.request

    from agent import wire
    from agent.config import ServingConfig
    from agent.local_server import LocalClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = str(tmp_path / "agent.sock")
    a = Agent(AgentConfig(device_id="raw-srv", state_dir=str(tmp_path / "srv"), build_keys=[str(keys[1])],
                          device_class="x86-64-generic",
                          serving=ServingConfig(unix_socket=sock, http_port=port))).start()
    row = {"mean radius": 14.0, "mean texture": 19.0, "mean smoothness": 0.09, "worst area": 800.0,
           "clinic": "oslo"}
    try:
        a.install(tabular_bundle.bundle_path, allow_new_name=True)
        out_name = a.predictor.active.manifest["outputs"][0]["name"]
        direct = a.predict([row, {**row, "clinic": "tromso"}])[out_name]
        url = f"http://127.0.0.1:{a.server.http_port}/v1/predict"
        req = urllib.request.Request(url, data=json.dumps({"inputs": [row, {**row, "clinic": "tromso"}]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            via_json = np.asarray(json.loads(resp.read())["outputs"][out_name], dtype=np.float32)
        numeric = {k: np.array([v, v], dtype=np.float32) for k, v in row.items() if k != "clinic"}
        body = wire.encode(numeric, features={"clinic": ["oslo", "tromso"]})
        req = urllib.request.Request(url, data=body, headers={"Content-Type": wire.CONTENT_TYPE})
        with urllib.request.urlopen(req, timeout=10) as resp:
            via_http_binary = wire.decode(resp.read())[0][out_name]
        client = LocalClient(sock)
        try:
            via_socket = client.call({}, rows=[row, {**row, "clinic": "tromso"}])[0][out_name]
        finally:
            client.close()
    finally:
        a.stop()
    for got in (via_json, via_http_binary, via_socket):
        np.testing.assert_allclose(got, direct, atol=1e-6)


def test_cli_parity_failure_exits_1_naming_the_feature_and_bad_pipeline_exits_2(tabular, keys, tmp_path,
                                                                               monkeypatch) -> None:
    from click.testing import CliRunner

    from compiler.cli import compile_command
    from compiler.export import export_torch

    onnx_path = tmp_path / "tabular.onnx"
    x = tabular["pipe"].transform(__import__("pandas").DataFrame(tabular["eval"])).astype(np.float32)
    export_torch(tabular["model"], {"input": x[:2]}, onnx_path)
    (tmp_path / "training_code.py").write_text(
        "import numpy as np, joblib, pandas as pd\n"
        f"PIPE = joblib.load({str(tabular['tmp'] / 'pipeline.joblib')!r})\n"
        "def transform(cols):\n"
        "    cols = dict(cols); cols['clinic'] = np.where(cols['clinic'] == 'oslo', 'bergen', cols['clinic'])\n"
        "    return PIPE.transform(pd.DataFrame(cols))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["--onnx", str(onnx_path), "--raw-eval", str(tabular["csv"]), "--signing-key", str(keys[0]),
            "--out", str(tmp_path / "out"), "--precision", "fp32", "--latency-iterations", "3", "--quiet"]
    res = CliRunner().invoke(compile_command, [*base, "--sklearn-pipeline", str(tabular["tmp"] / "pipeline.joblib"),
                                               "--training-transform", "training_code:transform"])
    assert res.exit_code == 1, res.output
    assert "parity" in res.output and "feature 'clinic'" in res.output
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(b"not a pickle")
    res = CliRunner().invoke(compile_command, [*base, "--sklearn-pipeline", str(bad)])
    assert res.exit_code == 2 and "cannot load" in res.output and "Traceback" not in res.output


def test_openvino_bundle_runs_the_same_preprocess_graph(tabular, keys, tmp_path) -> None:
    """The first graph runs in onnxruntime whatever the model's runtime: OpenVINO here."""
    (r,) = _compile(tabular, keys, "ov", sklearn_pipeline=str(tabular["tmp"] / "pipeline.joblib"),
                    device_classes=["x86-avx512-vnni"], precision="fp32")
    assert r.passed and r.format == "openvino", r.to_dict()
    a = Agent(AgentConfig(device_id="raw-ov", state_dir=str(tmp_path / "ov"), build_keys=[str(keys[1])],
                          device_class="x86-avx512-vnni")).start()
    try:
        a.install(r.bundle_path, allow_new_name=True)
        m = a.predictor.active.manifest
        ev = tabular["eval"]
        served = a.predict({k: v for k, v in ev.items()})[m["outputs"][0]["name"]]  # a mapping of columns
    finally:
        a.stop()
    parity = m["preprocess"]["parity"]
    assert parity["feature_max_abs_diff"] < 1e-4 and parity["output_max_abs_diff"] is not None
    diff = float(np.abs(served - tabular["expected"]).max())
    _record("tabular_openvino_fp32_max_abs_diff", diff)
    assert diff < 1e-3, parity


def test_feature_schema_toml_overrides_the_derived_schema(tabular, tmp_path) -> None:
    from compiler.errors import CompileInputError
    from compiler.preprocess import apply_overrides, from_sklearn, load_schema_overrides

    pre = from_sklearn(tabular["pipe"], "0" * 64, tabular["eval"], "input", 18)
    derived = {f["name"]: dict(f) for f in pre.schema}
    assert derived["worst area"]["min"] == pytest.approx(float(np.nanmin(tabular["eval"]["worst area"])))
    toml = tmp_path / "features.toml"
    toml.write_text('[features."worst area"]\nunit = "mm^2"\nmin = 0\nmax = 5000.0\n'
                    '[features.clinic]\ncategories = ["oslo", "bergen", "tromso", "stavanger"]\n')
    schema = {f["name"]: f for f in apply_overrides(pre.schema, load_schema_overrides(toml), str(toml))}
    assert schema["worst area"]["unit"] == "mm^2" and schema["worst area"]["max"] == 5000.0
    assert "stavanger" in schema["clinic"]["categories"]
    toml.write_text('[features.nope]\nmin = 0\n')
    with pytest.raises(CompileInputError, match="'nope' is not an input"):
        apply_overrides(pre.schema, load_schema_overrides(toml), str(toml))
    toml.write_text('[features.clinic]\nmin = "low"\n')
    with pytest.raises(CompileInputError, match="clinic"):
        apply_overrides(pre.schema, load_schema_overrides(toml), str(toml))
