"""The demo's first line of defence (issue 15): v2's training-serving skew fails the parity gate.

Compiled with its raw-input contract (devices send raw pixels, declared as the pipeline that
ships), v2 is checked against its own training code on the same raw rows; the build fails
naming the feature and the row. The team then ships v2 as a tensor bundle whose preprocessing
stays in the app, so the canary's drift gate remains the second line of defence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefleet.demo import DemoFailed, _output_to
from edgefleet.demo_view import DemoView


def parity_check(work: Path, build_key: Path, view: DemoView, model: Any, data: Any) -> None:
    """Compile v2 with its raw-input contract; the parity gate must fail, naming the feature."""
    import numpy as np

    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model
    from edgefleet import demo_model as dm

    raw = work / "data" / "v2-raw-eval.npz"
    raw.parent.mkdir(parents=True, exist_ok=True)
    np.savez(raw, pixels=data.eval_x, labels=data.eval_y)
    view.say("compiling v2 with its raw-input contract (devices send raw pixels; parity gate vs v2's training code)")
    with _output_to(work / "compile.log"):
        (r,) = compile_model(CompileConfig(
            torch=model, preprocess=dm.pixels_as_sent(), training_transform="edgefleet.demo_model:v2_training_transform",
            raw_eval=str(raw), device_classes=["x86-64-generic"], precision="fp32", name="digits", version=2,
            signing_key=build_key, out=work / "build-parity", progress=False, latency_iterations=5))
    if r.passed:
        raise DemoFailed("v2's training-serving skew was expected to fail the parity gate, but the build passed")
    detail = next(g["detail"] for g in r.gates if g["gate"] == "parity")
    view.say(f"  parity gate FAILED at compile time: {detail}")
    view.say("  the team ships v2 anyway as a tensor-input bundle (the app keeps its own preprocessing): "
             "the canary's drift gate is the second line of defence")
