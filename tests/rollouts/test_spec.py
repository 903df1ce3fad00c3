from __future__ import annotations

import pytest

from fleet.rollouts.spec import Gates, RolloutSpec, SpecError, TargetFilter, WaveSpec, standard_waves
from fleet.rollouts.spec_migrations import GATES_BY_VERSION, GATES_V1, SCHEMA_VERSION


def base(**kw):
    return {"model_name": "digits", "version": 2, "waves": [{"name": "canary", "percent": 1},
                                                             {"name": "all", "percent": 100}], **kw}


def test_round_trip_keeps_every_field():
    spec = RolloutSpec.from_dict(base(target={"device_classes": ["x86-64-generic"], "tags": ["lab"],
                                              "attributes": {"region": ["eu", "us"]}},
                                      gates={"soak_s": 30, "max_latency_p99_ratio": 1.2}))
    again = RolloutSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.waves[0].gates.soak_s == 30 and again.waves[1].gates.max_latency_p99_ratio == 1.2


def test_wave_gates_override_defaults():
    d = base(gates={"soak_s": 30})
    d["waves"][1]["gates"] = {"soak_s": 0, "require_approval": True}
    spec = RolloutSpec.from_dict(d)
    assert spec.waves[0].gates.soak_s == 30
    assert spec.waves[1].gates.soak_s == 0 and spec.waves[1].gates.require_approval


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(waves=[]), "at least one wave"),
    (lambda d: d["waves"][0].update(count=3), "exactly one of percent or count"),
    (lambda d: d["waves"][0].update(percent=150), "percent"),
    (lambda d: d["waves"].reverse(), "must not decrease"),
    (lambda d: d["waves"][1].update(name="canary"), "unique"),
    (lambda d: d.update(gates={"report_timeout_s": 0}), "report_timeout_s"),
    (lambda d: d.update(gates={"min_success": 1.5}), "min_success"),
    (lambda d: d.update(gates={"success_threshold": 0.5}), "success_threshold is now min_success"),
    (lambda d: d.update(gates={"enabled": ["installs", "success", "vibes"]}), "unknown gates .'vibes'.; known: "),
    (lambda d: d.update(gates={"enabled": ["errors"]}), "must include installs, success"),
    (lambda d: d.update(gates={"enabled": "errors"}), "list of gate names"),
    (lambda d: d.update(schema_version=99), "newer than this fleet reads"),
    (lambda d: d.update(gates={"bogus": 1}), "unknown fields"),
    (lambda d: d.update(colour="red"), "unknown fields"),
    (lambda d: d["waves"][0].update(mode="yolo"), "mode"),
    (lambda d: d.pop("model_name"), "model_name"),
    (lambda d: d.update(version=-1), "version"),
])
def test_invalid_specs_are_refused_with_the_field_named(mutate, message):
    d = base()
    mutate(d)
    with pytest.raises(SpecError, match=message):
        RolloutSpec.from_dict(d)


def test_target_filter_matches_all_conditions():
    f = TargetFilter(device_classes=("x86-64-generic",), tags=("lab",), attributes={"region": ["eu"]})
    assert f.matches("default", "d1", "x86-64-generic", ["lab", "edge"], {"region": "eu"})
    assert not f.matches("other", "d1", "x86-64-generic", ["lab"], {"region": "eu"})
    assert not f.matches("default", "d1", "nvidia-jetson", ["lab"], {"region": "eu"})
    assert not f.matches("default", "d1", "x86-64-generic", ["edge"], {"region": "eu"})
    assert not f.matches("default", "d1", "x86-64-generic", ["lab"], {"region": "us"})
    assert not f.matches("default", "d1", "x86-64-generic", ["lab"], None)


def test_standard_waves_can_shadow_the_canary():
    waves = standard_waves(Gates(soak_s=5), shadow_first=True)
    assert [w.percent for w in waves] == [1, 10, 50, 100]
    assert waves[0].mode == "shadow" and all(w.mode == "install" for w in waves[1:])
    RolloutSpec("digits", 2, waves=waves).validate()
    with pytest.raises(SpecError):
        RolloutSpec("digits", 2, waves=(WaveSpec("a", percent=10, fraction=0),)).validate()


# A rollout keeps the spec it was created with for its whole life: a stored spec written before
# schema versions existed (v1), with success_threshold (renamed min_success in v2), keys some
# other fleet version added and optional keys left out, must still be read.
V1_STORED = {
    "model_name": "digits", "version": 2, "name": "digits-v2", "seed": "",
    "target": {"fleet": "default", "device_classes": ["x86-64-generic"], "owner": "team-a"},
    "waves": [{"name": "canary", "percent": 10, "count": None, "mode": "install", "fraction": 0.1, "colour": "red",
               "gates": {"success_threshold": 0.75, "report_timeout_s": 30.0, "require_approval": True,
                         "max_vibes": 3}},
              {"name": "all", "percent": 100,
               "gates": {"success_threshold": 1.0}}],
    "rolled_out_by": "a newer fleet",
}


def test_a_stored_spec_of_the_old_shape_is_migrated_and_read_leniently():
    spec = RolloutSpec.from_stored(V1_STORED)
    canary, rest = spec.waves
    assert canary.gates.min_success == 0.75 and canary.gates.report_timeout_s == 30.0
    assert canary.gates.require_approval and rest.gates.min_success == 1.0
    assert rest.gates.report_timeout_s == Gates().report_timeout_s        # missing: the default
    assert canary.gates.enabled == GATES_V1 and rest.mode == "install"    # v1 waves were judged by every gate
    assert spec.target.device_classes == ("x86-64-generic",)
    stored = spec.to_dict()
    assert stored["schema_version"] == SCHEMA_VERSION and RolloutSpec.from_stored(stored) == spec
    assert RolloutSpec.from_dict(stored) == spec                           # the current shape is strict-clean
    with pytest.raises(SpecError, match="unknown fields"):
        RolloutSpec.from_dict(V1_STORED)                                   # API input stays strict


def test_a_stored_spec_is_not_revalidated_so_a_tightened_rule_never_stops_a_rollout():
    stored = RolloutSpec.from_dict(base()).to_dict()
    stored["waves"][0]["gates"]["min_windows"] = 0      # refused today; imagine it was allowed when stored
    assert RolloutSpec.from_stored(stored).waves[0].gates.min_windows == 0
    with pytest.raises(SpecError):
        RolloutSpec.from_dict(stored)


def test_a_new_gate_needs_a_new_schema_version_so_rollouts_in_flight_keep_their_gates():
    from fleet.rollouts.gates import REGISTRY

    assert REGISTRY.names() == GATES_BY_VERSION[SCHEMA_VERSION]
    some = base(gates={"enabled": ["installs", "success", "errors"]})
    assert RolloutSpec.from_dict(some).to_dict()["waves"][0]["gates"]["enabled"] == ["installs", "success", "errors"]
    assert "enabled" not in RolloutSpec.from_dict(base()).to_dict()["waves"][0]["gates"]   # all: the default
