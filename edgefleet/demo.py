"""`edgefleet demo`: the whole system on one machine, on embedded defaults.

It starts the fleet manager (SQLite; the broker at MQTT_URL, else a private Mosquitto, else an
in-process amqtt), trains a real digits classifier and compiles it for three device classes,
enrols agent processes of each class with one-time tokens, rolls v1 out to 100%, then rolls out
a v2 with a training-serving skew that the canary's drift gate stops and rolls back (compiled
with its raw-input contract, the same skew first fails the parity gate at build time: demo_parity.py). The fleet is
driven through its REST API, as an operator or a CI job would. Without --once the console stays up.
Act three (edgefleet/demo_concept.py): a v3 whose inputs look normal but whose answers are wrong
(concept drift) is stopped at the canary by online accuracy from labels fed back on the devices.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.demo_client import FleetClient
from edgefleet.demo_devices import DemoAgent, DeviceSpec, Traffic
from edgefleet.demo_report import build_failure, console_text, explain_stop, with_cause
from edgefleet.demo_view import DemoView

T = TypeVar("T")
MARKER = ".edgefleet-demo"
FLEET_ID = "demo"
CLASSES = ("x86-64-generic", "x86-avx512-vnni", "arm64-cortex-a")
REGIONS = ("eu", "us")
# Demo-sized gates: one-second telemetry windows and a handful of devices decide within seconds.
# A tiny MLP answers in microseconds on a shared laptop, where p99 is scheduler noise, so only a
# gross latency regression counts here.
GATES = {"report_timeout_s": 45, "min_requests": 40, "min_windows": 2, "latency_slack_us": 50_000}


class DemoFailed(Exception):
    """The scenario did not reach its expected end; the message says where it stopped."""


@dataclass
class DemoOptions:
    workdir: Path
    port: int = 8080
    agents_per_class: int = 2
    once: bool = False
    timeout_s: float = 240.0


@dataclass
class DemoOutcome:
    url: str
    token: str
    v1_rollout: dict[str, Any] = field(default_factory=dict)
    v2_rollout: dict[str, Any] = field(default_factory=dict)
    v3_rollout: dict[str, Any] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)


def prepare_workdir(path: Path) -> Path:
    """A demo directory is recreated each run; any other non-empty directory is left alone.

    The path is made absolute here, once: the fleet manager serves files from it, and Flask would
    resolve a relative path against its package folder."""
    path = Path(path).expanduser().absolute()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise click.UsageError(f"{path} is not empty and was not made by the demo; pick another --workdir")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `edgefleet demo`; removed and recreated by the next run\n")
    return path


def wait_until(view: DemoView, what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    """Poll `check` (refreshing the live view) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view.poll()
        got = check()
        if got:
            return got
        time.sleep(0.25)
    view.poll(force=True)
    raise DemoFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _quiet_logs(work: Path) -> None:
    """The demo's screen is for the story; HTTP access logs and library chatter go to demo.log."""
    import logging
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    handler = logging.FileHandler(work / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(handler)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (C++ libraries' too, hence file descriptors) to `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@dataclass
class DemoFleet:
    server: Any  # fleet.server.FleetServer
    token: str  # the demo's admin API token (also the console login)
    build_key: Path  # signs the bundles, as a CI secret would


@contextlib.contextmanager
def _fleet_server(work: Path, port: int, view: DemoView) -> Iterator[DemoFleet]:
    """The fleet manager on embedded defaults, with a build key it trusts."""
    from agent.keys import generate_keypair
    from fleet.ingest.broker import free_port, reachable, start_embedded_broker
    from fleet.registry.fleet_keys import sign_first_keylist
    from fleet.server import FleetServer
    from fleet.settings import FleetSettings

    keys = work / "keys"
    build_priv, build_pub = generate_keypair(keys, "build")
    fleet_priv, _ = generate_keypair(keys, "fleet")
    root_priv, _ = generate_keypair(keys, "root")  # offline in production: it only signs the key list
    broker = None
    mqtt_url = os.environ.get("MQTT_URL")
    if mqtt_url:
        view.say(f"MQTT broker: {mqtt_url} (from MQTT_URL)")
    else:
        broker = start_embedded_broker()
        mqtt_url = broker.url
        view.say(f"MQTT broker: private {broker.kind} at {mqtt_url}")
    if port and reachable("127.0.0.1", port):
        view.say(f"port {port} is taken; using a free one")
        port = 0
    token = f"demo_{secrets.token_urlsafe(16)}"
    settings = FleetSettings(data_dir=work / "fleet", mqtt_url=mqtt_url, fleet_id=FLEET_ID,
                             signing_key_path=fleet_priv, embedded_broker=False, trusted_build_keys=[build_pub],
                             api_tokens={token: "admin"}, rollout_interval_s=0.5, drift_interval_s=5.0)
    sign_first_keylist(settings, root_priv)  # devices pin this root at enrolment
    srv = FleetServer(settings, port=port or free_port()).start()
    try:
        yield DemoFleet(srv, token, build_priv)
    finally:
        srv.stop()
        if broker is not None:
            broker.stop()


def build_models(work: Path, build_key: Path, view: DemoView) -> dict[int, list[Any]]:
    """Train v1 and the skewed v2, compile both for every demo device class; gates must pass."""
    from compiler.config import CompileConfig
    from compiler.pipeline import compile_model
    from edgefleet import demo_model as dm

    data = dm.load_digits_data()
    out: dict[int, list[Any]] = {}
    for version, prep in ((1, lambda x: x), (2, dm.v2_preprocess)):
        view.say(f"training digits v{version} (PyTorch MLP on scikit-learn's digits)"
                 + (": inputs scaled to [-1, 1] in training only, a training-serving skew" if version == 2 else ""))
        model = dm.train_classifier(prep(data.train_x), data.train_y, seed=version)
        acc = dm.accuracy(model, prep(data.eval_x), data.eval_y)
        view.say(f"  reference accuracy on held-out digits: {acc:.3f}")
        if version == 2:  # issue 15: the skew is caught at compile time first
            from edgefleet.demo_parity import parity_check

            parity_check(work, build_key, view, model, data)
        calib = dm.write_npz(work / f"data/v{version}-calib.npz", prep(data.train_x[:256]), data.train_y[:256])
        ev = dm.write_npz(work / f"data/v{version}-eval.npz", prep(data.eval_x), data.eval_y, data.eval_slices)
        view.say(f"compiling v{version} for {', '.join(CLASSES)} (INT8 with calibration, gated)")
        with _output_to(work / "compile.log"):
            results = compile_model(CompileConfig(
                torch=model, example_input=(1, 64), calib=str(calib), eval=str(ev), device_classes=list(CLASSES),
                name="digits", version=version, signing_key=build_key, out=work / "build", progress=False,
                latency_iterations=20))
        for r in results:
            m = r.metrics
            gates = "passed" if r.passed else "FAILED: " + ", ".join(r.failed_gates)
            view.say(f"  {r.device_class:16} {r.format:8} {r.precision:5} {m.get('metric_name', 'metric')} "
                     f"{m.get('metric', float('nan')):.3f} (reference {m.get('reference_metric', float('nan')):.3f}), "
                     f"slice gap {m.get('slice_gap', float('nan')):.3f}, {r.size_bytes / 1024:.0f} KiB, gates {gates}")
        if not all(r.passed for r in results):
            raise DemoFailed(f"compiling v{version}: {build_failure(results)} (details: {work / 'compile.log'})")
        out[version] = results
    return out


SHORT = {"x86-64-generic": "x86", "x86-avx512-vnni": "vnni", "arm64-cortex-a": "arm"}


def _device_specs(per_class: int) -> list[DeviceSpec]:
    return [DeviceSpec(f"{SHORT[cls]}-{REGIONS[i % len(REGIONS)]}-{i + 1}", cls, REGIONS[i % len(REGIONS)])
            for cls in CLASSES for i in range(per_class)]


def _rollout_spec(version: int, waves: list[tuple[str, float]]) -> dict[str, Any]:
    return {"name": f"digits v{version}", "model_name": "digits", "version": version,
            "target": {"fleet": FLEET_ID}, "gates": GATES,
            "waves": [{"name": n, "percent": p} for n, p in waves]}


def _installed(snapshot: Any) -> dict[str, int | None]:
    return {d["id"]: (d.get("installed") or {}).get("version") for d in snapshot.devices}


def run_demo(opts: DemoOptions, view: DemoView) -> DemoOutcome:
    work = prepare_workdir(opts.workdir)
    _quiet_logs(work)
    view.say(f"working directory: {work}")
    with _fleet_server(work, opts.port, view) as fleet, contextlib.ExitStack() as stack:
        srv = fleet.server
        client = FleetClient(srv.url, fleet.token)
        view.client = client
        outcome = DemoOutcome(url=srv.url, token=fleet.token)
        view.say(f"fleet manager up at {srv.url} (SQLite in {work / 'fleet'})", style="bold")
        try:
            _scenario(opts, view, work, fleet, client, stack, outcome)
        except Exception as exc:  # any failure: say its first cause and keep the console reachable
            said = str(exc) if isinstance(exc, DemoFailed) else f"{type(exc).__name__}: {exc}"
            message = with_cause(said, client, view.rollout_id, work)
            where = console_text(outcome.url, outcome.token, work, opts.once, FLEET_ID)
            view.panel("demo failed", f"{message}\n\n{where}", "red")
            if not opts.once:
                _serve_until_interrupted(view, outcome, announce=False)
            raise DemoFailed(message) from None
        if not opts.once:
            _serve_until_interrupted(view, outcome)
        return outcome


def _scenario(opts: DemoOptions, view: DemoView, work: Path, fleet: DemoFleet, client: FleetClient,
              stack: contextlib.ExitStack, outcome: DemoOutcome) -> None:
    """Build, upload, enrol, roll v1 out, roll v2 out and watch the canary come back."""
    for version, results in build_models(work, fleet.build_key, view).items():
        for r in results:
            client.upload_bundle(r.bundle_path)
        view.say(f"uploaded digits v{version} ({len(results)} signed bundles) to the catalogue")
    agents = _start_agents(opts, view, work, fleet, client, stack)
    from edgefleet.demo_model import load_digits_data

    d = load_digits_data()  # raw pixels, as the devices' cameras deliver them; the true digits fed back later
    traffic = Traffic([a.http_port for a in agents], d.traffic_x, y=d.traffic_y)
    traffic.start()
    stack.callback(traffic.stop)
    view.say("local apps are sending raw digit images to every agent")
    _act_v1(opts, view, client, outcome, len(agents))
    _act_v2(opts, view, client, outcome)
    from edgefleet.demo_concept import concept_act  # third act: concept drift (issue 14)

    concept_act(view, work, fleet, client, outcome, opts.timeout_s)


def _start_agents(opts: DemoOptions, view: DemoView, work: Path, fleet: DemoFleet, client: FleetClient,
                  stack: contextlib.ExitStack) -> list[DemoAgent]:
    """Enrol one agent process per device spec with a one-time token, and wait for their signed state."""
    from fleet.ingest.broker import free_port

    agents: list[DemoAgent] = []
    stack.callback(lambda: [a.stop() for a in agents])
    for spec in _device_specs(opts.agents_per_class):
        tok = client.post("/api/enrolment-tokens", {"device_class": spec.device_class, "ttl_s": 600})["token"]
        agent = DemoAgent(spec, work / "agents", free_port())
        try:
            agent.enrol(fleet.server.url, tok)
        except RuntimeError as exc:
            raise DemoFailed(str(exc)) from None
        agent.start()
        agents.append(agent)
        view.say(f"enrolled {spec.device_id} ({spec.device_class}, region {spec.region}) with a one-time token")
    view.start_live()
    wait_until(view, "agents to start", lambda: all(a.status().get("ready") for a in agents), 120)
    wait_until(view, "signed state reports from every agent",
               lambda: len([d for d in view.poll(force=True).devices if d.get("state_seq", 0) > 0]) == len(agents),
               60)
    view.say(f"{len(agents)} agents running, each its own process, state directory and device key")
    return agents


def _act_v1(opts: DemoOptions, view: DemoView, client: FleetClient, outcome: DemoOutcome, n_agents: int) -> None:
    outcome.v1_rollout = _roll(client, view, 1, [("everyone", 100)], opts.timeout_s)
    if outcome.v1_rollout["status"] != "completed":
        raise DemoFailed(f"v1 rollout {outcome.v1_rollout['id']} ended {outcome.v1_rollout['status']}")
    view.panel("v1 is live", f"digits v1 installed on {n_agents} devices of {len(CLASSES)} classes", "green")
    if not view.console.is_terminal:  # on a terminal the live table already shows it
        view.print_tables()


def _act_v2(opts: DemoOptions, view: DemoView, client: FleetClient, outcome: DemoOutcome) -> None:
    """v2 (skewed) is stopped at the canary and the canary comes back to v1 by itself."""
    outcome.v2_rollout = r2 = _roll(client, view, 2, [("canary", 33), ("rest", 100)], opts.timeout_s)
    if r2["status"] not in ("paused", "rolled-back"):
        raise DemoFailed(f"v2 was expected to be stopped at the canary, but it ended {r2['status']}")
    canary = [t["device_id"] for t in client.get(f"/api/rollouts/{r2['id']}/targets?wave=0")["targets"]]

    def canary_back() -> bool:
        snap = view.poll(force=True)
        on_v1 = all(_installed(snap).get(d) == 1 for d in canary)
        return on_v1 and all(snap.targets.get(d, {}).get("status") == "rolled-back" for d in canary)

    wait_until(view, "the canary back on v1", canary_back, 90)
    outcome.rolled_back = canary
    outcome.devices = view.poll(force=True).devices
    view.panel("automatic rollback", explain_stop(r2, canary), "yellow")
    if not view.console.is_terminal:  # on a terminal the live table already shows it
        view.print_tables()


def _roll(client: FleetClient, view: DemoView, version: int, waves: list[tuple[str, float]],
          timeout_s: float) -> dict[str, Any]:
    r = client.post("/api/rollouts", _rollout_spec(version, waves))
    plan = ", ".join(f"{n} {p:g}%" for n, p in waves)
    view.say(f"rollout {r['id']}: digits v{version} in waves ({plan}), gated on installs, errors, latency, drift",
             style="bold cyan")
    view.watch(r["id"])

    def done() -> dict[str, Any] | None:
        cur = client.get(f"/api/rollouts/{r['id']}")
        return cur if cur["status"] in ("completed", "paused", "rolled-back", "aborted") else None

    return wait_until(view, f"rollout of v{version}", done, timeout_s)


def _serve_until_interrupted(view: DemoView, outcome: DemoOutcome, announce: bool = True) -> None:
    if announce:
        view.panel("console", f"open {outcome.url}/console and sign in with the token\n  {outcome.token}\n"
                   "Rollouts, devices, drift and alerts are there. Ctrl-C stops the demo.", "cyan")
    stop = {"now": False}

    def on_signal(*_a: Any) -> None:
        stop["now"] = True

    # Both, explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop["now"]:
            view.poll()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    view.say("stopping the demo")


@click.command("demo")
@click.option("--once", is_flag=True, help="end after the rollback instead of leaving the console running")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".edgefleet/demo"),
              show_default=True, help="recreated on each run")
@click.option("--port", type=int, default=8080, show_default=True, help="fleet manager port (a free one if taken)")
@click.option("--agents-per-class", type=click.IntRange(1, 10), default=2, show_default=True,
              help="agent processes per device class (3 classes)")
@click.option("--timeout", "timeout_s", type=float, default=240.0, show_default=True,
              help="seconds each rollout may take before the demo gives up")
def demo(once: bool, workdir: Path, port: int, agents_per_class: int, timeout_s: float) -> None:
    """Train, compile, enrol agents, roll out v1, then watch a bad v2 get rolled back."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    opts = DemoOptions(workdir=workdir, port=port, agents_per_class=agents_per_class, once=once,
                       timeout_s=timeout_s)
    view = DemoView(FleetClient("", ""), console)
    try:
        with view:
            outcome = run_demo(opts, view)
    except DemoFailed as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        raise SystemExit(1) from None
    console.print(f"[green]demo finished:[/] v1 on every device, v2 stopped at the canary and rolled back on "
                  f"{', '.join(outcome.rolled_back)}; v3 (concept drift) stopped at the canary by online accuracy")
