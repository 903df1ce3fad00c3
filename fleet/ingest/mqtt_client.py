"""A paho client tuned for receiving many small QoS 1 messages (the ingest side).

Stock paho reads every packet with three or four recv() calls, handles one packet per select()
and sends each PUBACK on its own after waking its loop through a socket pair: about eight
system calls per message, which at thousands of messages a second costs more CPU than the
messages' JSON. This subclass reads up to READ_CHUNK bytes per recv(), handles every packet
those bytes hold, and sends the PUBACKs of one chunk as one write.

With `on_batch` set, the messages of one read arrive in one call, as (topic, payload, mid)
tuples: complete QoS 1 PUBLISH packets without MQTT 5 properties (what agents send) are cut out
of the read buffer in one tight loop, never entering paho's per-packet state machine; any other
packet (a partial one at the end of a chunk, QoS 0/2, properties, CONNACK, SUBACK, PINGRESP ...)
goes through paho as before, and its message joins the same batch. After a read that brought
fewer than COALESCE_BELOW messages the loop waits `coalesce_s` (its acks already sent), so the
next read finds several (fewer wake-ups per message); a busy stream fills every read and never
waits, so a broker's in-flight window (20 messages on Mosquitto for MQTT 3.1.1) never throttles it.
The MQTT behaviour (QoS 1, reconnects, keepalive) is paho's own. With manual acks
(`manual_ack=True`) a message is acknowledged only when the caller says it is stored
(`ack_many`), so a process killed with messages in memory gets them again from its persistent
session instead of losing them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

READ_CHUNK = 256 * 1024
MAX_REFILLS = 16  # recv() calls per loop_read, so PUBACKs and keepalive are never starved
COALESCE_BELOW = 10  # messages per read below which the loop waits coalesce_s
_PUBACK = struct.Struct("!BBH")
Received = tuple[str, bytes, int]  # topic, payload, mid (0 for QoS 0)


class BufferedClient(mqtt.Client):
    """paho.mqtt.client.Client with buffered reads, batched PUBACKs and (on_batch) batched delivery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._refills = 0
        self._read_msgs = 0
        self._in_read = False
        self._acks: list[int] = []
        self._batch: list[Received] = []
        self.on_batch: Callable[[list[Received]], None] | None = None
        self.coalesce_s = 0.0

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for one byte when it starts a packet: cut out the fast ones before it does
        fresh = bufsize == 1 and self.on_batch is not None and self._in_packet["command"] == 0
        while True:
            if fresh:
                self._cut_publishes()
            if self._rpos < len(self._rbuf):
                break
            if self._in_read:
                if self._refills >= MAX_REFILLS:
                    raise BlockingIOError()  # paho keeps the partial packet; select() wakes us again
                self._flush_acks()  # acks go out once per chunk read, not once per loop_read
            data = super()._sock_recv(READ_CHUNK)
            self._refills += 1
            if not data or (not fresh and len(data) <= bufsize):
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]

    def _cut_publishes(self) -> None:
        """Take every complete QoS 1 PUBLISH without properties at the head of the buffer."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        v5, manual, batch, acks = self._protocol == mqtt.MQTTv5, self._manual_ack, self._batch, self._acks
        start = pos
        while pos + 5 < end and buf[pos] & 0xF6 == 0x32:  # PUBLISH, QoS 1 (dup and retain either way)
            n, i, mult = 0, pos + 1, 1
            while i < end and i - pos <= 4:
                n += (buf[i] & 0x7F) * mult
                mult <<= 7
                i += 1
                if buf[i - 1] < 0x80:
                    break
            else:
                break  # length incomplete or malformed: paho's path decides
            last = i + n
            if last > end or i + 2 > last:
                break
            te = i + 2 + ((buf[i] << 8) | buf[i + 1])
            body = te + 2 + v5
            if te == i + 2 or body > last or (v5 and buf[te + 2] != 0):
                break  # no topic (alias), truncated or with properties: paho's path
            mid = (buf[te] << 8) | buf[te + 1]
            if mid == 0:
                break
            batch.append((buf[i + 2:te].decode("utf-8", "replace"), buf[body:last], mid))
            if not manual:
                acks.append(mid)
            pos = last
        if pos != start:
            self._rpos = pos
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()

    def _sock_close(self) -> None:
        # Messages already cut out of complete packets are handed on (a read often ends with the
        # broker's last messages and then EOF): storing is idempotent, and unacknowledged ones come
        # again from a persistent session. A partial packet and unsent acks die with the connection.
        try:
            self._deliver(locked=False)  # paho may close from inside a callback: no callback lock here
        finally:
            self._rbuf, self._rpos, self._acks, self._batch = b"", 0, [], []
            super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # Handle every packet already buffered: select() cannot see bytes that left the socket.
        self._in_read, self._refills, self._read_msgs = True, 0, 0
        try:
            rc = super().loop_read(max_packets)
            while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None \
                    and self._rpos < len(self._rbuf):
                rc = super().loop_read(max_packets)
        finally:
            self._in_read = False
            self._flush_acks()
        if self.coalesce_s and self._read_msgs < COALESCE_BELOW and rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS:
            time.sleep(self.coalesce_s)  # a trickle: let the next read find several messages
        return rc

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        cmd, pkt = self._in_packet["command"], self._in_packet["packet"]
        if cmd & 0x06 != 0x02:  # QoS 0 and 2: paho's own path
            return super()._handle_publish()
        try:
            n = (pkt[0] << 8) | pkt[1]
            mid = (pkt[2 + n] << 8) | pkt[3 + n]
            start = 4 + n
            if self._protocol == mqtt.MQTTv5:
                if pkt[start] != 0:  # properties present: let paho decode them
                    return super()._handle_publish()
                start += 1
        except IndexError:
            return super()._handle_publish()  # truncated: paho reports the malformed packet
        if n == 0 and self._protocol != mqtt.MQTTv5:
            return super()._handle_publish()
        self._handle_on_message(_Received(mid, bytes(pkt[2:2 + n]), bytes(pkt[start:]), cmd))
        if self._manual_ack:
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS   # acked by ack_many once stored
        return self._send_puback(mid)

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        if self.on_batch is None:
            return super()._handle_on_message(message)
        topic = message._topic.decode("utf-8", "replace")
        self._batch.append((topic, message.payload, message.mid if message.qos else 0))
        if not self._in_read:
            self._deliver()

    def _deliver(self, locked: bool = True) -> None:
        if self._batch and self.on_batch is not None:
            batch, self._batch = self._batch, []
            self._read_msgs += len(batch)
            if not locked:
                self.on_batch(batch)
                return
            with self._in_callback_mutex:
                self.on_batch(batch)

    def ack_many(self, mids: list[int]) -> None:
        """PUBACK these QoS 1 messages in one write; safe from any thread (manual_ack mode)."""
        if mids and self._sock is not None:
            self._packet_queue(mqtt.PUBACK, b"".join(_PUBACK.pack(mqtt.PUBACK, 2, m) for m in mids), 0, 0)

    def _send_puback(self, mid: int) -> mqtt.MQTTErrorCode:
        if not self._in_read:
            return super()._send_puback(mid)
        self._acks.append(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _flush_acks(self) -> None:
        """Hand on the messages read so far, then acknowledge them (automatic acks)."""
        self._deliver()
        if self._acks and self._sock is not None:
            self._send_now(b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in self._acks))
        self._acks = []

    def _send_now(self, blob: bytes) -> None:
        """Write acks from the loop thread at once when nothing else waits to go out; queued, they
        cost a socket-pair wake-up and a second pass of paho's loop (select, loop_misc) per read.
        What the socket does not take goes to the FRONT of paho's queue: only this (loop) thread
        writes, so a packet another thread queued meanwhile is still unwritten and must follow the
        rest of these bytes, never land inside them."""
        if self._out_packet:
            self._packet_queue(mqtt.PUBACK, blob, 0, 0)
            return
        try:
            sent = self._sock_send(blob)
        except (BlockingIOError, ConnectionError, OSError):
            sent = 0
        if sent:
            with self._msgtime_mutex:
                self._last_msg_out = time.monotonic()
        if sent < len(blob):
            rest = blob[sent:]
            self._out_packet.appendleft({"command": mqtt.PUBACK, "mid": 0, "qos": 0, "pos": 0,
                                         "to_process": len(rest), "packet": rest, "info": None})


class _Received(mqtt.MQTTMessage):
    """An incoming QoS 1 message; no MQTTMessageInfo (its Condition serves outgoing ones)."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes, cmd: int) -> None:
        self.timestamp = time.monotonic()
        self.state = mqtt.mqtt_ms_invalid
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = 1
        self.dup = bool(cmd & 0x08)
        self.retain = bool(cmd & 0x01)
        self.info = None  # type: ignore[assignment]
        self.properties = None
