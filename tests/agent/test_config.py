from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, MqttConfig, load_config


def test_round_trip_through_toml(tmp_path: Path) -> None:
    cfg = AgentConfig(device_id="d1", state_dir=str(tmp_path / "s"), mqtt=MqttConfig(url="mqtt://h:1884"))
    cfg.telemetry.window_s = 5.5
    path = cfg.write(tmp_path / "agent.toml")
    assert load_config(path, environ={}) == cfg


def test_env_and_flags_override_file(tmp_path: Path) -> None:
    path = AgentConfig(device_id="d1", state_dir=str(tmp_path)).write(tmp_path / "a.toml")
    env = {"EDGEFLEET_DEVICE_ID": "from-env", "EDGEFLEET_MQTT__URL": "mqtt://b:1", "EDGEFLEET_TELEMETRY__WINDOW_S": "7"}
    cfg = load_config(path, environ=env)
    assert (cfg.device_id, cfg.mqtt.url, cfg.telemetry.window_s) == ("from-env", "mqtt://b:1", 7.0)
    cfg = load_config(path, {"device_id": "from-flag"}, environ=env)
    assert cfg.device_id == "from-flag"


@pytest.mark.parametrize("body, field", [
    ('device_id = "x"\n', "state_dir"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\nbogus = 1\n', "bogus"),
    ('device_id = "x y"\nstate_dir = "/tmp/x"\n', "device_id"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\n[mqtt]\nurl = "http://h"\n', "mqtt.url"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\n[telemetry]\nsample_rate = 2.0\n', "telemetry.sample_rate"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\n[telemetry]\nwindow_s = "soon"\n', "telemetry.window_s"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\ntrusted_keys = ["/nope.pub"]\n', "trusted_keys"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\n[serving]\nhttp_port = 70000\n', "serving.http_port"),
    ('device_id = "x"\nstate_dir = "/tmp/x"\n[health]\nmax_error_rate = -1\n', "health.max_error_rate"),
])
def test_errors_name_the_field(tmp_path: Path, body: str, field: str) -> None:
    p = tmp_path / "a.toml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(p, environ={})


def test_not_toml_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text("device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, environ={})
