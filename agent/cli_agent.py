"""`edgefleet agent ...` / `python -m agent ...`: run the agent, install a bundle offline,
show status, send a prediction to the local server.

Exit codes: 0 ok, 1 the operation failed (e.g. a bundle was refused), 2 bad config or input
(a one-line message, no traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agent.config import AgentConfig, ConfigError, load_config


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _config(config: str | None, overrides: dict[str, Any]) -> AgentConfig:
    flat = {k: v for k, v in overrides.items() if v is not None and k != "mqtt_url"}
    if overrides.get("mqtt_url"):
        flat["mqtt"] = {"url": overrides["mqtt_url"]}
    try:
        return load_config(config, flat)
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable


_common = [
    click.option("--config", "config", type=click.Path(dir_okay=False), envvar="EDGEFLEET_AGENT_CONFIG",
                 help="agent.toml"),
    click.option("--state-dir", default=None, help="overrides state_dir"),
    click.option("--device-id", default=None, help="overrides device_id"),
    click.option("--mqtt-url", default=None, help="overrides mqtt.url"),
]


def common(f: Any) -> Any:
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group(name="agent")
def agent_cli() -> None:
    """The EdgeFleet agent: serves the model on this device and keeps it healthy."""


@agent_cli.command()
@common
@click.option("--fleet-id", default=None, help="overrides fleet_id")
@click.option("--device-class", default=None, help="overrides device_class")
@click.option("--production", is_flag=True, default=None,
              help="refuse plaintext mqtt:// and http:// to remote hosts (or production = true in agent.toml)")
def run(config: str | None, state_dir: str | None, device_id: str | None, mqtt_url: str | None,
        fleet_id: str | None, device_class: str | None, production: bool | None) -> None:
    """Run the agent until SIGTERM."""
    from agent.daemon import Agent
    from agent.logs import setup_logging

    cfg = _config(config, {"state_dir": state_dir, "device_id": device_id, "mqtt_url": mqtt_url,
                           "fleet_id": fleet_id, "device_class": device_class, "production": production})
    setup_logging(cfg.log_level, cfg.device_id)
    try:
        agent = Agent(cfg).start()
    except ConfigError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc}", 1)
    agent.run_forever()


@agent_cli.command()
@common
@click.option("--allow-new-name", is_flag=True,
              help="operator override: install a model name this device never ran (logged and reported)")
@click.argument("bundle", type=click.Path(dir_okay=False))
def install(config: str | None, state_dir: str | None, device_id: str | None, mqtt_url: str | None,
            allow_new_name: bool, bundle: str) -> None:
    """Verify and install BUNDLE locally (offline devices, tests); it becomes active at next start."""
    from agent.daemon import Agent
    from agent.lifecycle import InstallError
    from agent.logs import setup_logging

    cfg = _config(config, {"state_dir": state_dir, "device_id": device_id, "mqtt_url": ""})
    setup_logging(cfg.log_level, cfg.device_id)
    if not Path(bundle).is_file():
        _fail(f"bundle {bundle} does not exist")
    cfg.telemetry.enabled = False
    try:
        agent = Agent(cfg)
    except ConfigError as exc:
        _fail(str(exc))
    agent.lifecycle.start()
    try:
        inst = agent.install(bundle, allow_new_name=allow_new_name)
    except InstallError as exc:
        _fail(f"install refused: {exc}", 1)
    finally:
        agent.outbox.close()
    click.echo(json.dumps({"installed": inst.public()}))


@agent_cli.command()
@click.option("--fleet-url", required=True, envvar="EDGEFLEET_FLEET_URL", help="the fleet manager, http(s)://host:port")
@click.option("--token", required=True, envvar="EDGEFLEET_ENROL_TOKEN", help="one-time enrolment token")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False), help="where the agent keeps its state")
@click.option("--config-out", "config_out", required=True, type=click.Path(dir_okay=False),
              help="agent.toml to write (0600: it holds the MQTT password)")
@click.option("--device-id", default=None, help="ask for this id (default: the fleet picks one)")
@click.option("--device-class", default=None, help="this device's class (see `edgefleet devices list`)")
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="attributes, e.g. region=eu (repeatable)")
@click.option("--http-port", default=0, type=int, help="local HTTP inference port (0: off)")
@click.option("--ca-file", default="", help="CA bundle for an https fleet URL")
@click.option("--root-key-id", "root_key_ids", multiple=True,
              help="pin: the fleet's key list must have exactly these root key ids (`edgefleet keys id root.pub`)")
@click.option("--retry-for", "retry_s", default=60.0, type=click.FloatRange(min=0), show_default=True,
              help="seconds to retry an unreachable or overloaded fleet (backoff with jitter; 0: once)")
def enrol(fleet_url: str, token: str, state_dir: str, config_out: str, device_id: str | None,
          device_class: str | None, attrs: tuple[str, ...], http_port: int, ca_file: str,
          root_key_ids: tuple[str, ...], retry_s: float) -> None:
    """Enrol this device with a fleet (one-time token) and write its agent.toml."""
    from agent.enrol import EnrolError, EnrolRequest, write_config
    from agent.enrol import enrol as do_enrol

    attributes: dict[str, str] = {}
    for a in attrs:
        k, sep, v = a.partition("=")
        if not sep or not k:
            _fail(f"--attr {a!r}: expected KEY=VALUE")
        attributes[k] = v
    try:
        # absolute here, once: agent.toml is read later from wherever the service starts
        cfg = do_enrol(EnrolRequest(fleet_url, token, Path(state_dir).expanduser().absolute(), device_id=device_id,
                                    device_class=device_class, attributes=attributes or None, http_port=http_port,
                                    ca_file=str(Path(ca_file).expanduser().absolute()) if ca_file else "",
                                    root_key_ids=root_key_ids, retry_s=retry_s))
    except EnrolError as exc:
        _fail(str(exc), 1)
    write_config(cfg, Path(config_out))
    click.echo(json.dumps({"device_id": cfg.device_id, "fleet": cfg.fleet_id, "config": config_out,
                           "mqtt": cfg.mqtt.url, "root_keys_pinned": len(cfg.root_keys)}))


@agent_cli.command()
@common
def status(config: str | None, state_dir: str | None, device_id: str | None, mqtt_url: str | None) -> None:
    """Print state_dir/status.json (written by the running agent) or the installed pointer."""
    cfg = _config(config, {"state_dir": state_dir, "device_id": device_id})
    path = cfg.state_path / "status.json"
    if path.exists():
        try:
            st = json.loads(path.read_text())
        except ValueError:
            st = {}
        pid = st.get("pid")
        if st.get("ready") and isinstance(pid, int) and not _alive(pid):
            st["ready"] = False  # the process died without cleaning up (kill -9, power loss)
            st["stale"] = True
        click.echo(json.dumps(st))
        return
    from agent.model_store import ModelStore

    ptr = ModelStore(cfg.state_path).pointer()
    click.echo(json.dumps({"ready": False, **{k: v.public() if v else None for k, v in ptr.items()}}))


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_inputs(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        _fail(f"input file {path} does not exist")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        doc = json.loads(p.read_text())
    except (ValueError, OSError) as exc:
        _fail(f"cannot read {path}: {exc}")
    inputs = doc.get("inputs", doc) if isinstance(doc, dict) else doc
    if isinstance(inputs, dict):
        return {k: np.asarray(v) for k, v in inputs.items()}
    return np.asarray(inputs)


@agent_cli.command()
@common
@click.argument("inputs", type=click.Path(dir_okay=False))
@click.option("--socket", "sock", default=None, help="Unix socket (default: serving.unix_socket)")
@click.option("--url", default=None, help="http://127.0.0.1:PORT instead of the socket")
def predict(config: str | None, state_dir: str | None, device_id: str | None, mqtt_url: str | None,
            inputs: str, sock: str | None, url: str | None) -> None:
    """Send INPUTS (.npy, .npz or JSON) to the local server and print the outputs as JSON."""
    data = _read_inputs(inputs)
    if sock is None and url is None:
        if config is None:
            _fail("give --socket, --url or --config")
        cfg = _config(config, {"state_dir": state_dir, "device_id": device_id})
        sock = cfg.serving.unix_socket or None
        if sock is None and cfg.serving.http_port:
            url = f"http://127.0.0.1:{cfg.serving.http_port}"
        if sock is None and url is None:
            _fail("the config enables no local server (serving.unix_socket or serving.http_port)")
    payload: Any = data
    if sock:
        from agent.local_server import LocalClient, LocalRequestError

        try:
            client = LocalClient(sock)
        except OSError as exc:
            _fail(f"cannot connect to {sock}: {exc}", 1)
        try:
            if isinstance(payload, dict):
                arrays = payload
            else:
                names = client.call({}, op="status")[1].get("status", {}).get("input_names") or []
                if len(names) != 1:
                    _fail("the model takes several inputs (or none is installed): pass an .npz or a JSON"
                          " object with input names")
                arrays = {names[0]: payload}
            out = client.predict(arrays)
        except LocalRequestError as exc:
            _fail(str(exc), 2 if exc.kind == "invalid_input" else 1)
        finally:
            client.close()
        click.echo(json.dumps({"outputs": {k: v.tolist() for k, v in out.items()}}))
        return
    import urllib.error
    import urllib.request

    body = json.dumps({"inputs": {k: v.tolist() for k, v in payload.items()} if isinstance(payload, dict)
                       else payload.tolist()}).encode()
    req = urllib.request.Request(f"{url}/v1/predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - local server
            click.echo(resp.read().decode())
    except urllib.error.HTTPError as exc:
        _fail(exc.read().decode(), 2 if exc.code == 400 else 1)
    except urllib.error.URLError as exc:
        _fail(f"cannot reach {url}: {exc}", 1)


@agent_cli.command("seal-config")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), envvar="EDGEFLEET_AGENT_CONFIG",
              help="agent.toml to rewrite")
def seal_config(config: str) -> None:
    """Seal a plaintext MQTT password in agent.toml with the storage key (the file is rewritten,
    0600, without its comments; environment overrides are not written into it)."""
    from agent.enrol import write_config

    try:
        cfg = load_config(config, environ={})
    except ConfigError as exc:
        _fail(str(exc))
    if not cfg.mqtt.password or cfg.mqtt.password_sealed:
        click.echo(json.dumps({"config": config, "sealed": []}))
        return
    try:
        write_config(cfg, Path(config))
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(json.dumps({"config": config, "sealed": ["mqtt.password"]}))


# The root CLI (edgefleet/cli.py) mounts this group as `edgefleet agent`.
agent = agent_cli


def main() -> None:
    agent_cli(prog_name="python -m agent")


if __name__ == "__main__":
    main()
