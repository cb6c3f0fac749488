"""LLRP 1.1, the EPCglobal Low Level Reader Protocol, spoken by network UHF RFID readers (Impinj, Zebra, ...).

Written from the EPCglobal LLRP 1.0.1 / 1.1 standards. A message, in both directions (big-endian)::

    u16  3 reserved bits | 3-bit version (1 = LLRP 1.0.1, 2 = LLRP 1.1) | 10-bit message type
    u32  length of the whole message, this 10-byte header included
    u32  message id (a response carries the id of its request)
    ...  the message's fields, then its parameters

A parameter is either TV (first bit 1, a 7-bit type, a value whose size the type fixes: 1..127) or TLV (first
six bits reserved, a 10-bit type of 128..1023, a u16 length including the 4-byte header, the parameter's
fields, then its own sub-parameters). Type 1023 is the vendor extension point (Custom: u32 IANA private
enterprise number, u32 subtype, data): a client that does not know a vendor's parameter skips it, and so does
this codec (kept as a raw :class:`Parameter`, never an error); so is any TLV of an unknown type, since its
length says where it ends. A TV of an unknown type cannot be skipped (its size is unknown): that makes the
enclosing parameter undecodable, though the message around it is still framed.

LLRP has no start marker and no checksum (TCP guarantees integrity): a stream is framed by the length fields
alone. A length that lies (below the header's 10 bytes, or absurdly large) or a version this side never
speaks means the stream can no longer be framed: :class:`LlrpFramer` counts it, stops, and the connection
must be reopened.

The package is pure (no I/O, clocks or asyncio); everything is imported from here:

- ``framing``: :class:`LlrpFramer` splits a byte stream into :class:`Frame`\\ s; :func:`encode_frame` /
  :func:`decode_frame` for one message;
- ``messages``: :func:`encode_message` and :func:`parse_message` turn the typed messages into frames and
  back, for both sides: the client's requests (:class:`GetReaderCapabilities`, :class:`SetReaderConfig`,
  :class:`DeleteRoSpec`, :class:`AddRoSpec`, :class:`EnableRoSpec`, :class:`StartRoSpec`, the AccessSpec
  messages :class:`AddAccessSpec`, :class:`DeleteAccessSpec`, :class:`EnableAccessSpec`,
  :class:`DisableAccessSpec`, :class:`GetAccessSpecs`, :class:`KeepaliveAck`, :class:`CloseConnection`, ...)
  and the reader's (:class:`ReaderEventNotification` with the ``events`` of :mod:`.events`,
  :class:`Response` with its :class:`LlrpStatus`, :class:`RoAccessReport`, :class:`Keepalive`,
  :class:`ErrorMessage`); a message type without a codec here is an :class:`UnknownMessage`;
- ``params``: :func:`decode_parameters` / :func:`encode_parameter`, any parameter tree, through one construct
  definition per parameter type (:data:`TV_VALUES`, :data:`TLV_SPECS`), in both directions; ``values``: the
  typed forms of the parameters a client sets and reads (:class:`RoSpec` with its :class:`AiSpec`\\ s and
  their :class:`TagObservation` stop triggers, :class:`RoReportSpec`, :class:`AccessSpec`, ...);
- ``tags``: :class:`TagReport` and RO_ACCESS_REPORT, the hot path; ``constants``: the standard's numbers.

The hot path is RO_ACCESS_REPORT: a reader streams thousands of TagReportData a second. They are decoded by a
few lines of indexing (:func:`parse_tag_report`), which the tests check against the construct definitions
(:func:`parse_tag_report_spec`): through construct a tag costs some 100 us here, by hand a few.
"""

from __future__ import annotations

from .constants import (
    AIR_PROTOCOL_C1G2,
    AISPEC_EVENT_END,
    CUSTOM,
    DEFAULT_MAX_MESSAGE,
    EPC96_BITS,
    HEADER_SIZE,
    SUPPORTED_VERSIONS,
    AccessReportTrigger,
    AccessSpecStopTriggerType,
    ConnectionAttemptStatus,
    MessageType,
    ParamType,
    ReaderEventType,
    ReportTrigger,
    RoSpecEventType,
    RoSpecState,
    StartTrigger,
    StatusCode,
    StopTrigger,
    TagObservationType,
    response_type,
)
from .events import (
    AiSpecEvent,
    AntennaEvent,
    BufferLevelWarningEvent,
    BufferOverflowEvent,
    ConnectionAttemptEvent,
    ConnectionCloseEvent,
    GpiEvent,
    HoppingEvent,
    ReaderEvent,
    ReaderExceptionEvent,
    RfSurveyEvent,
    RoSpecEvent,
    SpecLoopEvent,
)
from .framing import (
    MESSAGE,
    Frame,
    LlrpFramer,
    LlrpFramerStats,
    decode_frame,
    encode_frame,
)
from .messages import (
    MESSAGE_FIELDS,
    AddAccessSpec,
    AddRoSpec,
    CloseConnection,
    DeleteAccessSpec,
    DeleteRoSpec,
    DisableAccessSpec,
    DisableRoSpec,
    EnableAccessSpec,
    EnableEventsAndReports,
    EnableRoSpec,
    ErrorMessage,
    GetAccessSpecs,
    GetReaderCapabilities,
    GetReaderConfig,
    GetReport,
    GetRoSpecs,
    Keepalive,
    KeepaliveAck,
    Message,
    ReaderEventNotification,
    Response,
    SetReaderConfig,
    StartRoSpec,
    StopRoSpec,
    UnknownMessage,
    encode_message,
    parse_message,
)
from .params import (
    TLV_HEADER,
    TLV_SPECS,
    TV_VALUES,
    Parameter,
    decode_parameters,
    encode_parameter,
    parameter_name,
)
from .tags import (
    RoAccessReport,
    TagReport,
    encode_tag_report,
    parse_ro_access_report,
    parse_ro_access_report_spec,
    parse_tag_report,
    parse_tag_report_spec,
)
from .values import (
    AccessSpec,
    AiSpec,
    DeviceCapabilities,
    KeepaliveSpec,
    LlrpStatus,
    RoReportSpec,
    RoSpec,
    TagObservation,
    TagReportContent,
    antenna_power,
    capabilities_parameters,
    device_capabilities,
    transmit_power_table,
)

__all__ = [
    "AIR_PROTOCOL_C1G2",
    "AISPEC_EVENT_END",
    "CUSTOM",
    "DEFAULT_MAX_MESSAGE",
    "EPC96_BITS",
    "HEADER_SIZE",
    "MESSAGE",
    "MESSAGE_FIELDS",
    "SUPPORTED_VERSIONS",
    "TLV_HEADER",
    "TLV_SPECS",
    "TV_VALUES",
    "AccessReportTrigger",
    "AccessSpec",
    "AccessSpecStopTriggerType",
    "AddAccessSpec",
    "AddRoSpec",
    "AiSpec",
    "AiSpecEvent",
    "AntennaEvent",
    "BufferLevelWarningEvent",
    "BufferOverflowEvent",
    "CloseConnection",
    "ConnectionAttemptEvent",
    "ConnectionAttemptStatus",
    "ConnectionCloseEvent",
    "DeleteAccessSpec",
    "DeleteRoSpec",
    "DeviceCapabilities",
    "DisableAccessSpec",
    "DisableRoSpec",
    "EnableAccessSpec",
    "EnableEventsAndReports",
    "EnableRoSpec",
    "ErrorMessage",
    "Frame",
    "GetAccessSpecs",
    "GetReaderCapabilities",
    "GetReaderConfig",
    "GetReport",
    "GetRoSpecs",
    "GpiEvent",
    "HoppingEvent",
    "Keepalive",
    "KeepaliveAck",
    "KeepaliveSpec",
    "LlrpFramer",
    "LlrpFramerStats",
    "LlrpStatus",
    "Message",
    "MessageType",
    "ParamType",
    "Parameter",
    "ReaderEvent",
    "ReaderEventNotification",
    "ReaderEventType",
    "ReaderExceptionEvent",
    "ReportTrigger",
    "Response",
    "RfSurveyEvent",
    "RoAccessReport",
    "RoReportSpec",
    "RoSpec",
    "RoSpecEvent",
    "RoSpecEventType",
    "RoSpecState",
    "SetReaderConfig",
    "SpecLoopEvent",
    "StartRoSpec",
    "StartTrigger",
    "StatusCode",
    "StopRoSpec",
    "StopTrigger",
    "TagObservation",
    "TagObservationType",
    "TagReport",
    "TagReportContent",
    "UnknownMessage",
    "antenna_power",
    "capabilities_parameters",
    "decode_frame",
    "decode_parameters",
    "device_capabilities",
    "encode_frame",
    "encode_message",
    "encode_parameter",
    "encode_tag_report",
    "parameter_name",
    "parse_message",
    "parse_ro_access_report",
    "parse_ro_access_report_spec",
    "parse_tag_report",
    "parse_tag_report_spec",
    "response_type",
    "transmit_power_table",
]
