"""Install, verify, swap, health checks and rollbacks, in process."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.bundle import make_rollback_approval
from agent.daemon import Agent
from agent.keys import load_private_key
from agent.lifecycle import InstallError
from agent.serving import NoModelError, PredictError
from agent.spec_check import InputError


def _events(a: Agent) -> list[dict]:
    import json

    return [json.loads(m.payload)["payload"] for m in a.outbox.pending(0, 1000) if m.kind == "event"]


def test_install_swaps_and_keeps_previous_loaded(agent_factory, bundles, digits) -> None:
    a = agent_factory()
    with pytest.raises(NoModelError):
        a.predict(digits[0][:1])
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    assert a.predictor.active.version == 2 and a.predictor.previous.version == 1
    ptr = a.store.pointer()
    assert (ptr["active"].version, ptr["previous"].version) == (2, 1)
    assert [e["kind"] for e in _events(a)] == ["install-ok", "install-ok"]
    assert a.lifecycle.rollback_to_previous("test") is True
    assert a.predictor.active.version == 1 and a.store.pointer()["active"].version == 1


def test_downgrade_refused_without_approval(agent_factory, bundles, fleet_keys) -> None:
    a = agent_factory()
    a.install(bundles["v2"])
    with pytest.raises(InstallError, match="downgrade"):
        a.install(bundles["v1"])
    assert a.predictor.active.version == 2
    ev = _events(a)[-1]
    assert ev["kind"] == "bundle-refused" and ev["details"]["code"] == "downgrade"
    from agent.bundle import verify_bundle

    vb = verify_bundle(bundles["v1"], a.keys.build)
    approval = make_rollback_approval(load_private_key(fleet_keys["priv"]), "digits", 1, vb.manifest_sha256)
    a.install(bundles["v1"], approval)
    assert a.predictor.active.version == 1


def test_tampered_and_untrusted_bundles_refused(agent_factory, bundles, tmp_path) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    bad = tmp_path / "tampered.bundle"
    data = bytearray(Path(bundles["v2"]).read_bytes())
    data[-2000] ^= 0x01  # flip one bit in the payload
    bad.write_bytes(bytes(data))
    with pytest.raises(InstallError):
        a.install(bad)
    with pytest.raises(InstallError, match="unknown-key"):
        a.install(bundles["rogue_v5"])
    assert a.predictor.active.version == 1
    codes = [e["details"]["code"] for e in _events(a) if e["kind"] == "bundle-refused"]
    assert len(codes) == 2 and codes[1] == "unknown-key"
    assert not [p for p in a.store.root.iterdir() if "v5" in p.name or "v2" in p.name]


def test_non_finite_model_fails_health_check(agent_factory, bundles, digits) -> None:
    a = agent_factory()
    a.install(bundles["v2"])
    with pytest.raises(InstallError, match="health-non-finite"):
        a.install(bundles["nan_v4"])
    assert a.predictor.active.version == 2
    assert np.isfinite(a.predict(digits[0][:3])["logits"]).all()
    assert _events(a)[-1]["kind"] == "install-failed"


def test_latency_budget_health_check(agent_factory, bundles) -> None:
    from agent.config import HealthConfig

    a = agent_factory(health=HealthConfig(latency_budget_ms=1e-6))
    with pytest.raises(InstallError, match="health-latency"):
        a.install(bundles["v1"])
    assert a.predictor.active is None


def test_runtime_errors_during_probation_roll_back(agent_factory, bundles, digits) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    new = a.predictor.active

    class Broken:
        name = "broken"

        def run(self, x):
            raise RuntimeError("device lost")

    new.runtime = Broken()
    for _ in range(3):
        with pytest.raises(PredictError):
            a.predict(digits[0][:1])
    from tests.agent.conftest import wait_for

    wait_for(lambda: a.predictor.active.version == 1, 10, what="local rollback")
    # the good model serves first; the event follows once the pointer write is done
    wait_for(lambda: any(e["kind"] == "local-rollback" for e in _events(a)), 10, what="local-rollback event")
    assert a.predict(digits[0][:1])["logits"].shape == (1, 10)
    ev = [e for e in _events(a) if e["kind"] == "local-rollback"]
    assert ev and "error rate" in ev[0]["reason"] and ev[0]["details"] == {"from_version": 2, "to_version": 1, "pointer_saved": True}
    assert a.store.pointer()["active"].version == 1


def test_slow_model_after_swap_rolls_back(agent_factory, bundles, digits) -> None:
    import time as _time

    from agent.config import HealthConfig
    from tests.agent.conftest import wait_for

    a = agent_factory(health=HealthConfig(latency_budget_ms=20.0, probation_requests=5))
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    real = a.predictor.active.runtime

    class Slow:
        name = "slow"

        def run(self, x):
            _time.sleep(0.03)  # 30 ms > 20 ms budget, after passing the warm-up
            return real.run(x)

    a.predictor.active.runtime = Slow()
    for _ in range(5):
        a.predict(digits[0][:1])  # all answered: latency alone never fails a request
    wait_for(lambda: a.predictor.active.version == 1, 10, what="latency rollback")
    wait_for(lambda: any(e["kind"] == "local-rollback" for e in _events(a)), 10, what="local-rollback event")
    ev = [e for e in _events(a) if e["kind"] == "local-rollback"]
    assert ev and "latency" in ev[0]["reason"] and "20.00 ms" in ev[0]["reason"]


def test_bad_request_does_not_hurt_next(agent_factory, bundles, digits) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    with pytest.raises(InputError, match="dimension 1 is 3"):
        a.predict(np.zeros((2, 3), np.float32))
    assert a.predict(digits[0][:2])["logits"].shape == (2, 10)
    p = a.flush_telemetry()[0]
    assert p["errors"]["invalid_input"] == 1 and p["requests"] == 2


def test_long_windows_keep_memory_bounded(agent_factory, bundles, digits) -> None:
    from agent.telemetry import Telemetry
    from tests.agent.conftest import wait_for

    a = agent_factory("fold-1")
    a.install(bundles["v1"])
    Telemetry.FOLD_AT = 50
    try:
        for _ in range(120):
            a.predict(digits[0][:1])
        wait_for(lambda: len(a.predictor.active.stats.latencies_us) < 50, 5, what="latencies folded")
        assert a.predictor.active.stats.folded.total >= 50
        p = a.flush_telemetry()[0]
        assert p["requests"] == 120  # nothing lost by compaction
    finally:
        Telemetry.FOLD_AT = 20000


def test_zero_failed_requests_during_swaps(agent_factory, bundles, digits) -> None:
    a = agent_factory()
    a.install(bundles["v1"])
    x = digits[0][:4]
    failures: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                assert a.predict(x)["logits"].shape == (4, 10)
                served[0] += 1
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for b in ("v2", "v3"):
        a.install(bundles[b])
    for _ in range(3):  # instant rollbacks and back, under load
        a.lifecycle.rollback_to_previous("flip")
        a.install(bundles["v3"])
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and served[0] > 0
    assert a.predictor.active.version == 3


def test_restart_loads_last_active(config_factory, bundles, digits) -> None:
    cfg = config_factory("restart")
    a = Agent(cfg).start()
    a.install(bundles["v1"])
    a.install(bundles["v2"])
    a.stop()
    b = Agent(cfg).start()
    try:
        assert b.predictor.active.version == 2 and b.predictor.previous.version == 1
        # a corrupted active model folder falls back to the previous one at start
        shutil.rmtree(b.store.path_of(b.predictor.active.installed))
    finally:
        b.stop()
    c = Agent(cfg).start()
    try:
        assert c.predictor.active.version == 1
        assert c.predict(digits[0][:1])["logits"].shape == (1, 10)
    finally:
        c.stop()
