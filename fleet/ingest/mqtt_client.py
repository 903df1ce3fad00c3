"""A paho client tuned for receiving many small QoS 1 messages (the ingest side).

Stock paho reads every packet with three or four recv() calls, handles one packet per select()
and sends each PUBACK on its own after waking its loop through a socket pair: about eight
system calls per message, which at thousands of messages a second costs more CPU than the
messages' JSON. This subclass reads up to READ_CHUNK bytes per recv(), handles every packet
those bytes hold, and sends the PUBACKs of one chunk as one write; a QoS 1 PUBLISH without MQTT 5
properties (what agents send) is decoded without building a Properties object. The MQTT
behaviour (QoS 1, reconnects, keepalive) is paho's own. With manual acks (`manual_ack=True`) a
message is acknowledged only when the caller says it is stored (`ack_many`), so a process killed
with messages in memory gets them again from its persistent session instead of losing them.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import paho.mqtt.client as mqtt

READ_CHUNK = 256 * 1024
MAX_REFILLS = 16  # recv() calls per loop_read, so PUBACKs and keepalive are never starved
_PUBACK = struct.Struct("!BBH")


class BufferedClient(mqtt.Client):
    """paho.mqtt.client.Client with buffered reads and batched PUBACKs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._refills = 0
        self._in_read = False
        self._acks: list[int] = []

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._in_read:
                if self._refills >= MAX_REFILLS:
                    raise BlockingIOError()  # paho keeps the partial packet; select() wakes us again
                self._flush_acks()  # acks go out once per chunk read, not once per loop_read
            data = super()._sock_recv(READ_CHUNK)
            self._refills += 1
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:self._rpos]

    def _sock_close(self) -> None:
        self._rbuf, self._rpos, self._acks = b"", 0, []  # bytes of a dead connection are never parsed
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # Handle every packet already buffered: select() cannot see bytes that left the socket.
        self._in_read, self._refills = True, 0
        try:
            rc = super().loop_read(max_packets)
            while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None \
                    and self._rpos < len(self._rbuf):
                rc = super().loop_read(max_packets)
        finally:
            self._in_read = False
            self._flush_acks()
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
        if self._acks and self._sock is not None:
            blob = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in self._acks)
            self._packet_queue(mqtt.PUBACK, blob, 0, 0)
        self._acks = []


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
