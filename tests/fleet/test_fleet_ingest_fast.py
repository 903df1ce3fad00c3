"""The ingest fast paths decide exactly as the plain ones: buffered MQTT reads, orjson decoding,
one-pass count checks, pre-flattened histogram merges, batched device lookups, threaded
signature checks."""

from __future__ import annotations

import copy
import json
import threading
import time

import numpy as np
import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from agent.protocol import MAX_MESSAGE_BYTES, ProtocolError
from agent.protocol import decode as std_decode
from fleet.devsim import SimDevice
from fleet.ingest import aggregate, fastjson
from fleet.ingest.store import MIN_PER_THREAD, Processor
from fleet.ingest.verification import MAX_INT, check_telemetry
from fleet.models import TelemetryWindow
from fleet.registry.enrolment import create_enrolment_token, enrol


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("refused", exc.reason)


@pytest.mark.parametrize("raw", [
    b'{"a": [1, 2.5, "x", null, true], "b": {"c": -3}}', b'{"a": NaN}', b'{"a": Infinity}',
    b'{"big": 1180591620717411303424}', b'{"n": -9223372036854775809}', b'{"n": 18446744073709551615}',
    b'{"f": 0.12345678901234567890123}', b'{"a": [1,\n  -99999999999999999999]}', b'[ 123456789012345678901 ]',
    b'{"s": "12345678901234567890123", "n": 3}', b'{"u": "\\ud800"}', '{"a": 1}'.encode("utf-16"),
    b'\xef\xbb\xbf{"a": 1}', b'{"a": 1', b"[1, 2]", b'"text"', b'{"a": 1} x', b"\xff\xfe",
    b'{"k": 1, "k": 2}', b" " * (MAX_MESSAGE_BYTES + 1), b"",
])
def test_fastjson_decode_matches_the_stdlib(raw: bytes) -> None:
    fast, plain = _outcome(fastjson.decode, raw), _outcome(std_decode, raw)
    assert fast[0] == plain[0]
    if fast[0] == "ok":
        assert json.dumps(fast[1], sort_keys=True) == json.dumps(plain[1], sort_keys=True)
    else:
        assert fast[1] == plain[1]


def test_signed_telemetry_takes_the_orjson_path(baseline) -> None:  # type: ignore[no-untyped-def]
    dev = SimDevice("j")
    raw = dev.sign(dev.telemetry(np.random.default_rng(0), baseline))  # manifest_sha256 "000...": digits in a string
    assert b"0" * 19 in raw and not fastjson._long_number(raw)


def _reference_counts_ok(p: dict) -> bool:  # type: ignore[type-arg]
    """The original per-list checks."""
    def ok(v):  # type: ignore[no-untyped-def]
        return isinstance(v, list) and (not v or (set(map(type, v)) == {int} and min(v) >= 0 and max(v) <= MAX_INT))

    feats = p["features"]
    pred = p.get("prediction")
    return (ok([c for f in feats for c in f["counts"]]) and ok([f.get("nan", 0) for f in feats])
            and (pred is None or ok(pred.get("counts"))))


@pytest.mark.parametrize("value", [0, 7, 2**56 - 1, 2**56, 2**62, 2**62 + 1, 2**63, 2**64, 2**80, -1, True, False,
                                   1.0, "1", None, [1]])
@pytest.mark.parametrize("where", ["counts", "nan", "prediction"])
def test_count_checks_accept_exactly_what_the_plain_checks_accept(baseline, value, where) -> None:  # type: ignore[no-untyped-def]
    p = SimDevice("c").telemetry(np.random.default_rng(0), baseline)
    if where == "counts":
        p["features"][3]["counts"][5] = value
    elif where == "nan":
        p["features"][1]["nan"] = value
    else:
        p["prediction"]["counts"][0] = value
    expected = _reference_counts_ok(p)
    got = _outcome(check_telemetry, p)
    assert (got[0] == "ok") == expected, (where, value, got)
    if got[0] == "ok":
        assert got[1].counts == [c for f in p["features"] for c in f["counts"]]


@pytest.mark.parametrize("field", ["sampled", "dropped_windows", "shadow.compared", "shadow.agreed"])
@pytest.mark.parametrize("value", [0, 5, 2**62, 2**62 + 1, -1, True, 1.5, "3", None])
def test_every_aggregated_count_is_checked(baseline, field, value) -> None:  # type: ignore[no-untyped-def]
    """Aggregation adds sampled, dropped_windows and the shadow counts too: the shape check holds
    them to what it holds the histogram counts to."""
    p = SimDevice("c").telemetry(np.random.default_rng(0), baseline)
    if field.startswith("shadow."):
        p["shadow"] = {"compared": 4, "agreed": 3, field.split(".")[1]: value}
    else:
        p[field] = value
    ok = type(value) is int and 0 <= value <= MAX_INT
    assert (_outcome(check_telemetry, p)[0] == "ok") == ok


@pytest.mark.parametrize(("key", "ok"), [("0", True), ("193", True), ("194", False), ("007", True), ("1000", False),
                                         ("-1", False), ("x", False), ("", False), ("\u0663", True)])
def test_latency_bucket_keys(baseline, key, ok) -> None:  # type: ignore[no-untyped-def]
    """The usual keys are found in one set look-up; any other key is parsed as before."""
    p = SimDevice("c").telemetry(np.random.default_rng(0), baseline)
    p["latency_us"]["buckets"][key] = 2
    assert (_outcome(check_telemetry, p)[0] == "ok") == ok


def test_count_checks_on_odd_shapes(baseline) -> None:  # type: ignore[no-untyped-def]
    base = SimDevice("c").telemetry(np.random.default_rng(0), baseline)
    cases = []
    p = copy.deepcopy(base)
    p["prediction"]["counts"] = "nope"
    cases.append((p, False))
    p = copy.deepcopy(base)
    del p["prediction"]["counts"]
    cases.append((p, False))
    p = copy.deepcopy(base)
    p["prediction"] = None
    cases.append((p, True))
    p = copy.deepcopy(base)
    p["features"] = []
    cases.append((p, True))
    p = copy.deepcopy(base)
    for f in p["features"]:
        f["counts"] = []
    cases.append((p, True))
    for p, ok in cases:
        assert (_outcome(check_telemetry, p)[0] == "ok") == ok


def test_merge_many_over_checked_histograms_equals_plain_merging(baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    ps = [SimDevice(f"h{i}").telemetry(rng, baseline, errors=i) for i in range(6)]
    ps[2]["features"][0]["nan"] = 4
    odd = copy.deepcopy(ps[5])
    odd["features"][0]["edges_hash"] = "other"
    both = ps + [odd]
    fast = aggregate.merge_many(both, [check_telemetry(p) for p in both])
    assert fast == aggregate.merge_many(both)
    plain = aggregate.merge_all(ps)
    assert fast["features"] == plain["features"] and fast["prediction"] == plain["prediction"]
    assert fast["edge_mismatch"] == 1 and fast["n_windows"] == 7


def test_batch_scalar_merge_equals_one_payload_at_a_time(baseline) -> None:  # type: ignore[no-untyped-def]
    """merge_many adds the scalars of the whole batch in one pass: same sums (floats folded in the
    same order), counts, maxima and key order as merging the payloads one by one."""
    rng = np.random.default_rng(7)
    ps = [SimDevice(f"s{i}").telemetry(rng, baseline, errors=i) for i in range(7)]
    ps[0]["resources"] = {"cpu_percent": 0.1, "rss_mb": 3, "temp_c": None, "ok": True, "note": "x"}
    ps[1]["resources"] = None
    ps[2]["resources"] = {"temp_c": 41.5, "cpu_percent": 1e-17}
    ps[3]["shadow"] = {"compared": 5, "agreed": 4}
    ps[4]["latency_us"] = {"buckets": {"3": 2, "90": 1}, "sum_us": 0.3}
    ps[5]["errors"] = {"new_kind": 2, "runtime": 1}
    ps[6]["sampled"], ps[6]["dropped_windows"] = 11, 2
    del ps[6]["latency_us"]["sum_us"]
    one_by_one = aggregate.empty()
    for p in ps:
        aggregate.merge_into(one_by_one, p)
    batch = aggregate.merge_many(ps)
    for k in ("n_windows", "devices", "requests", "sampled", "dropped_windows", "errors", "latency_us",
              "resources_sum", "resources_n", "resources_max", "shadow"):
        assert json.dumps(batch[k]) == json.dumps(one_by_one[k]), k  # exact, key order included
    assert batch["resources_n"] == {"cpu_percent": 6, "rss_mb": 5, "mem_percent": 4, "temp_c": 1}


def _enrol(fleet, dev: SimDevice) -> None:  # type: ignore[no-untyped-def]
    dev.fleet = fleet.settings.fleet_id
    with fleet.ctx.session() as db:
        tok, _ = create_enrolment_token(db, "test")
    with fleet.ctx.session() as db:
        enrol(db, fleet.settings, tok, dev.public_key_b64, device_id=dev.device_id, device_class=dev.device_class,
              attributes={"region": "eu"})


def test_a_large_batch_is_verified_on_threads_with_every_decision_kept(fleet, baseline) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    devs = [SimDevice(f"p{i}") for i in range(12)]
    for d in devs:
        _enrol(fleet, d)
    stranger = SimDevice("stranger", fleet=fleet.settings.fleet_id)
    msgs, good = [], set()
    for i in range(4 * MIN_PER_THREAD):
        d = devs[i % len(devs)]
        p = d.telemetry(rng, baseline, window_start=60.0 * (i // len(devs)), n=20)
        if i % 7 == 3:
            msgs.append((d.topic("telemetry"), d.sign(p, key=stranger.key)))  # bad signature
        elif i % 11 == 5:
            msgs.append((stranger.topic("telemetry"), stranger.sign(p)))     # unknown device
        else:
            msgs.append((d.topic("telemetry"), d.sign(p)))
            good.add((d.device_id, p["seq"]))
    proc = Processor(fleet.settings, fleet.ctx.engine)
    assert fleet.settings.ingest.verify_threads >= 2
    queries, reads = [], []  # SQLAlchemy's statements (SQLite) and the cache's reads (PostgreSQL: its own cursor)
    event.listen(fleet.ctx.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: queries.append(stmt) if "FROM device" in stmt else None)
    rows = proc.devices._rows
    proc.devices._rows = lambda ids: reads.append(sorted(ids)) or rows(ids)  # type: ignore[method-assign]
    parsed = proc.parse_many(msgs)
    assert [p is not None for p in parsed] == [(t.split("/")[3], json.loads(r)["payload"]["seq"]) in good
                                               for t, r in msgs]
    assert reads == [sorted({d.device_id for d in devs} | {stranger.device_id})]  # every device of the batch
    assert len(queries) == (0 if fleet.ctx.engine.dialect.name == "postgresql" else 1)  # in one query
    proc.store(parsed)
    proc.process(msgs)  # redelivered: all duplicates
    snap = proc.stats.snapshot()
    n_bad = sum(1 for i in range(len(msgs)) if i % 7 == 3)
    assert snap["stored"]["telemetry"] == len(good) and snap["duplicates"]["telemetry"] == len(good)
    assert snap["dropped"] == {"bad-signature": 2 * n_bad, "unknown-device": 2 * (len(msgs) - len(good) - n_bad)}
    with Session(fleet.ctx.engine) as db:
        assert {(r.device_id, r.seq) for r in db.exec(select(TelemetryWindow))} == good


@pytest.mark.mqtt
@pytest.mark.parametrize("batched", [False, True], ids=["on_message", "on_batch"])
@pytest.mark.parametrize("mqtt5", [True, False])
def test_buffered_client_receives_every_message_intact_and_acks_it(broker, mqtt5, batched) -> None:  # type: ignore[no-untyped-def]
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from fleet.ingest.mqtt_client import READ_CHUNK, BufferedClient

    topic = f"edgefleet-test/{time.time_ns()}/buffered"
    sizes = [0, 1, 5, 127, 128, 16383, 16384, 4000, READ_CHUNK - 7, READ_CHUNK + 1000, 3 * READ_CHUNK] + [4096] * 300
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got: list[tuple[bytes, bool]] = []
    done, subscribed = threading.Event(), threading.Event()
    proto = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
    cid = f"buffered-{time.time_ns()}"

    def on_message(client, userdata, msg):  # type: ignore[no-untyped-def]
        got.append((msg.payload, msg.topic == topic))
        if len(got) >= len(payloads):
            done.set()

    def on_batch(messages):  # type: ignore[no-untyped-def]
        # (topic, payload, mid): cut from the read buffer, or paho's (properties, chunk edges)
        got.extend((p, t == topic and 0 < m < 65536) for t, p, m in messages)
        if len(got) >= len(payloads):
            done.set()

    def connect() -> BufferedClient:
        c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto,
                           **({} if mqtt5 else {"clean_session": False}))
        c.on_message = on_message
        if batched:
            c.on_batch, c.coalesce_s = on_batch, 0.05
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
        if mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 60
            c.connect(broker[0], broker[1], clean_start=False, properties=props)
        else:
            c.connect(broker[0], broker[1])
        c.loop_start()
        assert subscribed.wait(10)
        return c

    sub = connect()
    sub.disconnect()
    sub.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{cid}-pub", protocol=proto)
    pub.max_inflight_messages_set(1000)
    pub.connect(broker[0], broker[1])
    pub.loop_start()
    infos = []
    for i, body in enumerate(payloads):
        props = None
        if mqtt5 and i % 5 == 0:  # some carry MQTT 5 properties: paho's own decoding path
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = ("k", str(i))
        infos.append(pub.publish(topic, body, qos=1, properties=props))
    for info in infos:
        info.wait_for_publish(10)
    pub.disconnect()
    pub.loop_stop()
    subscribed.clear()
    sub = connect()  # the backlog arrives in large reads
    try:
        assert done.wait(20), f"{len(got)} of {len(payloads)}"
        assert [g[0] for g in got] == payloads and all(g[1] for g in got)
        time.sleep(0.3)  # the acks of the last chunk leave after its last on_message
    finally:
        sub.disconnect()
        sub.loop_stop()
    n = len(got)
    subscribed.clear()
    sub = connect()  # everything was acknowledged: nothing is delivered again
    try:
        time.sleep(0.5)
        assert len(got) == n
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_open_signed_parses_the_signed_bytes_or_leaves_the_message_to_the_general_path(baseline) -> None:  # type: ignore[no-untyped-def]
    from agent.keys import Keyring
    from fleet.ingest.verification import decode_telemetry, open_signed, verify_signed

    dev, other = SimDevice("o"), SimDevice("other")
    ring = Keyring.from_public_keys([dev.key.public_key()])
    p = dev.telemetry(np.random.default_rng(1), baseline)
    p["device_class"] = 'x",' + '"signature":{"a":1}'  # the envelope's marker inside a string of the payload
    raw = dev.sign(p)
    for verify in (True, False):
        got, view = open_signed(raw, ring, verify)
        assert got == p and json.loads(got.raw) == p and view is None  # the stored text is the signed payload
    # telemetry: decoded and shape-checked in one pass, the same check as on a decoded dict
    p["seq"] = 7
    raw = dev.sign(p)
    for verify in (True, False):
        got, view = open_signed(raw, ring, verify, decode_telemetry)
        assert got == p and json.loads(got.raw) == p and view == check_telemetry(p)
    p["requests"] = -1  # a bad shape: the general path decodes the envelope and reports it
    assert open_signed(dev.sign(p), ring, True, decode_telemetry) is None
    with pytest.raises(ProtocolError, match=r"\$.requests"):
        check_telemetry(p)
    p["requests"] = 200
    forged = other.sign(p)  # right layout, another device's key
    assert open_signed(forged, ring, True) is None  # general path: bad-signature (and quarantine)
    with pytest.raises(ProtocolError) as exc:
        open_signed(forged, ring, False)
    assert exc.value.reason == "bad-signature"
    doc = json.loads(raw)
    for odd in ({**doc, "extra": 1}, {"signature": doc["signature"], "payload": doc["payload"]}):
        text = json.dumps(odd, separators=(",", ":")).encode()
        assert open_signed(text, ring, True) is None and open_signed(text, ring, False) is None
        if "extra" not in odd:
            assert verify_signed(odd, ring) == p  # the general path still accepts the reordered envelope
    tampered = raw.replace(b'"requests":200', b'"requests":201')
    assert open_signed(tampered, ring, True) is None  # the signature covers the bytes parsed


def test_acks_the_socket_does_not_take_stay_ahead_of_a_packet_queued_meanwhile() -> None:
    """The MQTT thread writes a read's PUBACKs at once; when the socket takes only part of them and
    another thread queues a packet during that write, the rest of the acks must still go out
    first (else that packet's bytes would land inside an ack: a broken stream)."""
    import paho.mqtt.client as mqtt

    from fleet.ingest.mqtt_client import BufferedClient

    c = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id="partial-acks")
    c._thread = threading.current_thread()  # as after loop_start(): only the loop thread writes

    class ShortWrites:  # a socket whose buffer is nearly full: it takes 3 bytes
        def send(self, buf: bytes) -> int:
            c._packet_queue(mqtt.PUBLISH, b"other thread's packet", 1, 1)  # queued during the write
            return 3

        def close(self) -> None:
            pass

    c._sock = ShortWrites()
    c._sock_send = lambda buf: c._sock.send(buf)  # paho's own wraps TLS errors; not needed here
    acks = b"\x40\x02\x00\x01\x40\x02\x00\x02"
    c._send_now(acks)
    assert [bytes(p["packet"]) for p in c._out_packet] == [acks[3:], b"other thread's packet"]
