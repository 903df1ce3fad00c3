"""Issue 20: rollouts that survive faults, with the fleet in a child process, a private
mosquitto, PostgreSQL and simulated devices built on the agent's own protocol code. Every run
of a good version completes with exactly one install per device; a bad version stops at the
canary; no telemetry window is lost across restarts within the ingest session expiry."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
import requests
from sqlmodel import Session, select

from fleet.rollouts.models import Rollout, RolloutTarget
from tests.rollouts.faultworld import MOSQUITTO, FaultWorld
from tests.rollouts.simdevice import Behaviour
from tests.waiting import wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture
def world_factory(tmp_path, pg_url):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    made: list[FaultWorld] = []

    def make(**kw) -> FaultWorld:
        w = FaultWorld(tmp_path / f"w{len(made)}", pg_url, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def _targets(w: FaultWorld, rid: int) -> list[RolloutTarget]:
    with Session(w.engine) as s:
        return list(s.exec(select(RolloutTarget).where(RolloutTarget.rollout_id == rid)))


def _wave_has(w: FaultWorld, rid: int, wave: int, statuses: tuple[str, ...]) -> bool:
    return any(t.wave_index == wave and t.status in statuses for t in _targets(w, rid))


def _assert_good_run(w: FaultWorld, rid: int, version: int) -> None:
    r = w.wait_done(rid)
    if r.status != "completed":   # what a failure report needs
        for t in _targets(w, rid):
            print(t.device_id, t.wave_index, t.status, t.reason)
        for dev, sim in w.sims.items():
            print(dev, "device", [(c["kind"], c["seq"]) for c in sim.accepted], sim.refused,
                  "fleet sees", w.device(dev).installed_version)
    assert r.status == "completed", (r.reason or {}).get("summary")
    installs = Counter(c.device_id for c in w.commands(rid) if c.kind == "install")
    assert set(installs.values()) == {1} and len(installs) == len(w.sims)
    assert set(w.installs_accepted(version).values()) == {1}
    assert w.count(lambda d: d.installed_version == version) == len(w.sims)


def test_fleet_killed_at_six_points_of_a_rollout_still_completes_it(world_factory):
    """What was seen 1 and 3: kill -9 (and one graceful restart) while waves are commanded,
    installing and being judged; the restarted fleet resumes under the same ingest identity."""
    w = world_factory()
    rid = w.create(2, (25, 50, 100))
    points = [
        ("created", lambda: True, signal.SIGKILL),
        ("wave 0 commanded", lambda: _wave_has(w, rid, 0, ("commanded", "installed", "healthy")), signal.SIGKILL),
        ("wave 0 installed", lambda: _wave_has(w, rid, 0, ("installed", "healthy")), signal.SIGTERM),
        ("wave 1 commanded", lambda: w.rollout(rid).current_wave >= 1, signal.SIGKILL),
        ("wave 2 commanded", lambda: w.rollout(rid).current_wave >= 2, signal.SIGKILL),
        ("wave 2 installed", lambda: _wave_has(w, rid, 2, ("installed", "healthy")), signal.SIGKILL),
    ]
    for what, cond, sig in points:
        if w.rollout(rid).status != "running":
            break
        wait_for(lambda c=cond: c() or w.rollout(rid).status != "running", 60, what)
        w.restart_fleet(sig)
    _assert_good_run(w, rid, 2)
    assert w.windows_lost() == 0, sorted(w.missing())[:20]


def test_a_bad_version_stops_at_the_canary_when_the_fleet_is_killed_during_it(world_factory):
    w = world_factory(behaviours={3: Behaviour(drift=True)})
    rid = w.create(3, (25, 100))
    wait_for(lambda: _wave_has(w, rid, 0, ("commanded", "installed")) or w.rollout(rid).status != "running",
             60, "canary commanded")
    assert w.rollout(rid).status == "running"
    w.restart_fleet(signal.SIGKILL)           # while the canary installs and is judged
    r = w.wait_done(rid)
    assert r.status == "paused" and r.current_wave == 0, r.reason
    wait_for(lambda: w.count(lambda d: d.installed_version == 3) == 0, 30, "canary rolled back")
    assert not w.installs_accepted(3).keys() - {t.device_id for t in _targets(w, rid) if t.wave_index == 0}


def _broker_outage(w: FaultWorld, rid: int, down_s: float) -> None:
    """Stop the broker for down_s while the rollout's current wave is judged; the wave must say it
    waits (API, console, an open alert) rather than time its devices out."""
    down_at = time.monotonic()
    w.broker.stop()                            # longer than report_timeout_s
    api = requests.Session()
    api.headers["Authorization"] = "Bearer op"
    seen = wait_for(lambda: (x := api.get(f"{w.url}/api/rollouts/{rid}", timeout=5).json()).get("waiting") and x,
                    15, "waiting state in the API")
    assert seen["waiting"]["message"].startswith("waiting: ingest disconnected"), seen["waiting"]
    page = api.get(f"{w.url}/console/rollouts/{rid}", timeout=5).text
    assert "waiting: ingest disconnected" in page
    alerts = api.get(f"{w.url}/api/alerts", params={"status": "open"}, timeout=5).json()
    assert any(a["reference"] == f"rollout:{rid}" and "waiting" in a["summary"]
               for a in alerts["items"]), alerts
    time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
    w.broker.start()


def test_a_broker_outage_makes_rollouts_wait_not_fail(world_factory):
    """What was seen 4: a broker outage blinded the fleet; devices timed out from the decision and
    a good version was rolled back. Now the wave waits (visible in API, console and an open alert)
    and resumes; the issue's fault suite asks for 20 s and 60 s outages. One rollout meets both
    (20 s while wave 1 is judged, 60 s while wave 2 is): one world and canary wave instead of two."""
    w = world_factory()
    rid = w.create(2, (25, 50, 100), report_timeout_s=6)
    for wave, down_s in ((1, 20), (2, 60)):
        wait_for(lambda wave=wave: w.rollout(rid).current_wave >= wave
                 and _wave_has(w, rid, wave, ("commanded", "installed")), 60, f"wave {wave} commanded")
        assert w.rollout(rid).status == "running"
        _broker_outage(w, rid, down_s)
    _assert_good_run(w, rid, 2)
    # mosquitto 2.0 restores neither MQTT 5 sessions nor shared subscriptions after a restart:
    # devices with mqtt.hold_until_ingest (as enrolled) keep their windows until ingest has
    # resubscribed and announced itself, so none is lost (880 of 1200 were before).
    assert w.windows_lost() == 0, sorted(w.missing())[:20]


def test_two_evaluators_take_over_from_a_killed_holder(world_factory):
    """What was seen 6: after a crash the rollout waited for a 15 s lease. Two evaluator
    processes: the holder is killed mid-rollout, the other takes over, nothing is sent twice."""
    w = world_factory(fleet_evaluator=False, behaviours={3: Behaviour(drift=True)})
    w.start_evaluator("eval-a")
    w.start_evaluator("eval-b")
    rid = w.create(2, (25, 50, 100))
    wait_for(lambda: w.rollout(rid).current_wave >= 1 and w.rollout(rid).last_holder, 60, "wave 1")
    holder = w.rollout(rid).last_holder
    w.evaluators[holder].kill()
    _assert_good_run(w, rid, 2)
    with Session(w.engine) as s:
        assert s.get(Rollout, rid).last_holder != holder
    # a bad version with the holder killed during its canary stops there
    rid3 = w.create(3, (25, 100))
    wait_for(lambda: _wave_has(w, rid3, 0, ("commanded", "installed")), 60, "canary commanded")
    r = w.wait_done(rid3)
    assert r.status == "paused" and r.current_wave == 0, r.reason
