"""The fleet's own MQTT clients (ingest, rollout publisher) log in to a broker that requires a
password, over plain TCP and over TLS with a private CA: a real Mosquitto with a password file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.db import init_db, make_engine
from fleet.ingest.broker import broker_address, free_port
from fleet.ingest.service import IngestService
from fleet.rollouts.commands import MqttPublisher
from fleet.settings import FleetSettings
from tests.waiting import wait_for

pytestmark = pytest.mark.mqtt
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 (openssl, as an operator would)."""
    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=edgefleet-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = d / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt),
        "-days", "2", "-extfile", str(ext))
    return ca, crt, key


@pytest.fixture
def locked_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "fleet-svc", "s3cret/with:odd@chars"], check=True,
                   capture_output=True)
    pw.chmod(0o600)
    ca, crt, key = _tls_files(tmp_path)
    plain, tls = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    # As root, mosquitto drops to its own user, which could not read our 0600 files: stay as we are.
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}per_listener_settings false\nallow_anonymous false\npassword_file {pw}\n"
                    f"listener {plain} 127.0.0.1\n"
                    f"listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from fleet.ingest.broker import reachable

    wait_for(lambda: reachable("127.0.0.1", plain) and reachable("127.0.0.1", tls), 10, "locked mosquitto")
    yield {"plain": plain, "tls": tls, "ca": str(ca)}
    proc.terminate()
    proc.wait(10)


def _ingest(tmp_path: Path, url: str, ca: str = "") -> IngestService:
    s = FleetSettings(data_dir=tmp_path / "fleet", mqtt_url=url, mqtt_ca_file=ca, embedded_broker=False)
    engine = make_engine(None, data_dir=s.data_dir)
    init_db(engine)
    return IngestService(s, engine)


def test_password_is_url_decoded_and_never_printed() -> None:
    a = broker_address("mqtts://fleet-svc:s3cret%2Fwith%3Aodd%40chars@broker.example.com")
    assert (a.host, a.port, a.tls, a.username, a.password) == (
        "broker.example.com", 8883, True, "fleet-svc", "s3cret/with:odd@chars")
    assert "s3cret" not in repr(a)
    assert "s3cret" not in repr(FleetSettings(mqtt_url="mqtt://u:s3cret@h:1883"))
    with pytest.raises(ValueError, match="unsupported MQTT URL scheme"):
        broker_address("http://h")


def test_ingest_and_publisher_log_in(locked_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = f"mqtt://fleet-svc:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{locked_broker['plain']}"
    ing = _ingest(tmp_path / "a", good).start(timeout=10)
    try:
        assert ing.subscribed.is_set() and ing.mqtt5     # the MQTT 5 probe logged in too
    finally:
        ing.stop()
    pub = MqttPublisher.from_url(good, timeout_s=5)
    try:
        assert pub.connected and pub.publish("edgefleet/v1/x/d/cmd", b"{}")
    finally:
        pub.close()
    bad = f"mqtt://fleet-svc:wrong@127.0.0.1:{locked_broker['plain']}"
    with pytest.raises(RuntimeError, match="could not subscribe"):
        _ingest(tmp_path / "b", bad).start(timeout=3)
    anonymous = MqttPublisher.from_url(f"mqtt://127.0.0.1:{locked_broker['plain']}", timeout_s=2)
    try:
        assert not anonymous.connected
    finally:
        anonymous.close()


def test_ingest_over_tls_with_a_private_ca(locked_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = f"mqtts://fleet-svc:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{locked_broker['tls']}"
    ing = _ingest(tmp_path / "t", url, ca=locked_broker["ca"]).start(timeout=10)
    try:
        assert ing.subscribed.is_set()
    finally:
        ing.stop()
    with pytest.raises(RuntimeError, match="cannot connect to the broker .*certificate verify failed"):
        _ingest(tmp_path / "u", url).start(timeout=3)   # the system store does not know our private CA
