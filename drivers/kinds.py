"""The event kinds, each named once.

An event's ``kind`` is a dotted type (``rfid.read``, ``device.status``, ...): it goes into the upstream topic
(``<prefix>/<gateway>/<device>/<kind>``), so a kind is a public name, documented per kind in the README with
the ``data`` it carries. Drivers and processors use these constants, never the strings, and a driver
declares what it emits in :attr:`drivers.base.Driver.emits`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BLE_ADVERT",
    "CAN_FRAME",
    "CAN_SIGNALS",
    "COMMAND_REQUEST",
    "COMMAND_RESULT",
    "DEVICE_STATUS",
    "GPS_FIX",
    "J1939_DM1",
    "J1939_PGN",
    "METER_READING",
    "RFID_ARRIVED",
    "RFID_DEPARTED",
    "RFID_FLOW",
    "RFID_MOVED",
    "RFID_READ",
    "ZIGBEE_ALARM",
    "ZIGBEE_JOINED",
    "ZIGBEE_REPORT",
]

DEVICE_STATUS: Final = "device.status"
"""A device's state: the supervisor's ``connected``/``disconnected``/``failed``/``stopped`` for every device,
and what a device says of itself (an LLRP reader's antenna and buffer events)."""

RFID_READ: Final = "rfid.read"
"""One read of one tag by one antenna (``uhf-r2000``, ``llrp``)."""

RFID_ARRIVED: Final = "rfid.arrived"
"""A tag seen for the first time (tag smoothing, a processor of RFID devices)."""

RFID_MOVED: Final = "rfid.moved"
"""A tag's strongest zone changed (tag smoothing)."""

RFID_DEPARTED: Final = "rfid.departed"
"""A tag unseen for the smoothing's ``depart_after_s`` (tag smoothing)."""

RFID_FLOW: Final = "rfid.flow"
"""Tags that arrived in one lane in one period (tag smoothing with ``lanes``)."""

METER_READING: Final = "meter.reading"
"""One poll's values of a meter or sensor (``modbus``, ``dlt645``)."""

COMMAND_REQUEST: Final = "command.request"
"""A command request as the gateway received it (the audit record; emitted by the runtime's command service,
never by a driver): ``{"id", "command", "args", "ts", "topic"}``, or ``{"id", "error", "topic"}`` when it
could not be read."""

COMMAND_RESULT: Final = "command.result"
"""The result the gateway gave a command request (the audit record, emitted by the command service):
``{"id", "command", "status", "reason", "data", "duration_ms"}``."""

BLE_ADVERT: Final = "ble.advert"
"""One BLE advertisement decoded (BTHome v2, Ruuvi RAWv2, iBeacon, Eddystone UID/URL/TLM) or, with the
device's ``raw: true``, passed through undecoded (``ble``)."""

GPS_FIX: Final = "gps.fix"
"""A receiver's position fix (``gps``): ``lat``, ``lon``, ``alt_m``, ``speed_kmh``, ``course_deg``,
``fix_quality``, ``satellites``, ``hdop``, ``time`` (the receiver's UTC, ISO 8601) and why it was reported
(``reason``)."""

CAN_FRAME: Final = "can.frame"
"""One CAN frame as heard, undecoded (``can`` with ``raw_frames: true``)."""

CAN_SIGNALS: Final = "can.signals"
"""One CAN message decoded with the device's DBC file: its signals' physical values (``can``)."""

J1939_PGN: Final = "j1939.pgn"
"""One J1939 parameter group decoded with the built-in PGN table: its SPNs' physical values (``can``)."""

J1939_DM1: Final = "j1939.dm1"
"""A J1939 ECU's active diagnostic trouble codes and lamps (DM1), on change and repeated (``can``)."""

ZIGBEE_REPORT: Final = "zigbee.report"
"""One ZCL attribute of a sensor, reported or read, named, scaled and with its unit (``xbee``)."""

ZIGBEE_ALARM: Final = "zigbee.alarm"
"""An IAS zone's status changed (an alarm, a tamper, a low battery), its bits named (``xbee``)."""

ZIGBEE_JOINED: Final = "zigbee.joined"
"""A device joined (or rejoined) the ZigBee network: node identification or device announce (``xbee``)."""
