from agent.outbox import Outbox


def test_bounded_drops_oldest_and_counts(tmp_path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_messages=3)
    seqs = [ob.put("t", lambda s: f"w{s}".encode()) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert [m.payload for m in ob.pending()] == [b"w3", b"w4", b"w5"]
    assert ob.dropped_windows == 2 and len(ob) == 3
    ob.put("e", lambda s: b"event", kind="event")
    assert [m.payload for m in ob.pending()] == [b"w4", b"w5", b"event"]  # telemetry dropped before events


def test_ack_deletes_and_state_survives_reopen(tmp_path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_messages=10)
    for _ in range(3):
        ob.put("t", lambda s: str(s).encode())
    first = ob.pending()[0]
    ob.ack(first.id)
    assert ob.next_seq() == 4
    ob.close()
    ob2 = Outbox(tmp_path / "o.sqlite", max_messages=10)
    assert [m.payload for m in ob2.pending()] == [b"2", b"3"]
    assert ob2.put("t", lambda s: b"x") == 5  # seq keeps increasing across restarts
