"""The typed LLRP messages of both sides, and :func:`encode_message` / :func:`parse_message`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from construct import ConstructError, GreedyBytes, Int8ub, Int16ub, Int32ub, Struct

from protocols.errors import DecodeError, EncodeError

from .constants import _STATUS_RESPONSES, CUSTOM, MessageType, ParamType
from .events import ReaderEvent, _event_from, _event_parameter
from .framing import Frame, encode_frame
from .params import Parameter, _flags, _wrap_build, decode_parameters, encode_parameter
from .tags import RoAccessReport, encode_tag_report, parse_ro_access_report
from .values import AccessSpec, KeepaliveSpec, LlrpStatus, RoReportSpec, RoSpec


@dataclass(frozen=True, slots=True)
class GetReaderCapabilities:
    """``requested``: 0 all, 1 general device, 2 LLRP, 3 regulatory, 4 air protocol capabilities."""

    requested: int = 0
    message_type: ClassVar[int] = MessageType.GET_READER_CAPABILITIES


@dataclass(frozen=True, slots=True)
class GetReaderConfig:
    antenna: int = 0
    requested: int = 0
    gpi_port: int = 0
    gpo_port: int = 0
    message_type: ClassVar[int] = MessageType.GET_READER_CONFIG


@dataclass(frozen=True, slots=True)
class SetReaderConfig:
    """SET_READER_CONFIG with the parameters a client of this gateway sets: which reader events to be told
    about (ReaderEventType, enabled) pairs, the default report spec, keepalives, and whether to hold events
    and reports on reconnect. ``extra`` parameters (AntennaConfiguration, Custom, ...) go after these."""

    reset_to_factory_default: bool = False
    event_notifications: tuple[tuple[int, bool], ...] = ()
    report: RoReportSpec | None = None
    keepalive: KeepaliveSpec | None = None
    hold_events_and_reports: bool | None = None
    extra: tuple[Parameter, ...] = ()
    message_type: ClassVar[int] = MessageType.SET_READER_CONFIG


@dataclass(frozen=True, slots=True)
class AddRoSpec:
    rospec: RoSpec
    message_type: ClassVar[int] = MessageType.ADD_ROSPEC


@dataclass(frozen=True, slots=True)
class DeleteRoSpec:
    """``rospec_id`` 0 deletes every ROSpec."""

    rospec_id: int = 0
    message_type: ClassVar[int] = MessageType.DELETE_ROSPEC


@dataclass(frozen=True, slots=True)
class StartRoSpec:
    rospec_id: int
    message_type: ClassVar[int] = MessageType.START_ROSPEC


@dataclass(frozen=True, slots=True)
class StopRoSpec:
    rospec_id: int
    message_type: ClassVar[int] = MessageType.STOP_ROSPEC


@dataclass(frozen=True, slots=True)
class EnableRoSpec:
    """``rospec_id`` 0 enables every ROSpec."""

    rospec_id: int
    message_type: ClassVar[int] = MessageType.ENABLE_ROSPEC


@dataclass(frozen=True, slots=True)
class DisableRoSpec:
    rospec_id: int
    message_type: ClassVar[int] = MessageType.DISABLE_ROSPEC


@dataclass(frozen=True, slots=True)
class GetRoSpecs:
    message_type: ClassVar[int] = MessageType.GET_ROSPECS


@dataclass(frozen=True, slots=True)
class AddAccessSpec:
    """ADD_ACCESSSPEC: the AccessSpec must come disabled (a reader refuses it otherwise)."""

    access_spec: AccessSpec
    message_type: ClassVar[int] = MessageType.ADD_ACCESSSPEC


@dataclass(frozen=True, slots=True)
class DeleteAccessSpec:
    """``access_spec_id`` 0 deletes every AccessSpec (what sllurp sends on connect and before it hangs up)."""

    access_spec_id: int = 0
    message_type: ClassVar[int] = MessageType.DELETE_ACCESSSPEC


@dataclass(frozen=True, slots=True)
class EnableAccessSpec:
    """``access_spec_id`` 0 enables every AccessSpec."""

    access_spec_id: int
    message_type: ClassVar[int] = MessageType.ENABLE_ACCESSSPEC


@dataclass(frozen=True, slots=True)
class DisableAccessSpec:
    """``access_spec_id`` 0 disables every AccessSpec."""

    access_spec_id: int
    message_type: ClassVar[int] = MessageType.DISABLE_ACCESSSPEC


@dataclass(frozen=True, slots=True)
class GetAccessSpecs:
    """Answered by GET_ACCESSSPECS_RESPONSE: a :class:`Response` whose ``params`` are the AccessSpecs
    (:meth:`AccessSpec.from_parameter <protocols.llrp.AccessSpec.from_parameter>` reads each)."""

    message_type: ClassVar[int] = MessageType.GET_ACCESSSPECS


@dataclass(frozen=True, slots=True)
class GetReport:
    """Ask for the TagReportData the reader holds now (an RO_ACCESS_REPORT answers, nothing else)."""

    message_type: ClassVar[int] = MessageType.GET_REPORT


@dataclass(frozen=True, slots=True)
class EnableEventsAndReports:
    message_type: ClassVar[int] = MessageType.ENABLE_EVENTS_AND_REPORTS


@dataclass(frozen=True, slots=True)
class KeepaliveAck:
    message_type: ClassVar[int] = MessageType.KEEPALIVE_ACK


@dataclass(frozen=True, slots=True)
class CloseConnection:
    message_type: ClassVar[int] = MessageType.CLOSE_CONNECTION


@dataclass(frozen=True, slots=True)
class Keepalive:
    message_type: ClassVar[int] = MessageType.KEEPALIVE


@dataclass(frozen=True, slots=True)
class ReaderEventNotification:
    """READER_EVENT_NOTIFICATION: ``timestamp_us`` is microseconds since the epoch, or since the reader
    started when ``uptime``. ``extra`` keeps the parameters this codec skipped (vendor Custom ones...)."""

    events: tuple[ReaderEvent, ...] = ()
    timestamp_us: int = 0
    uptime: bool = False
    extra: tuple[Parameter, ...] = ()
    message_type: ClassVar[int] = MessageType.READER_EVENT_NOTIFICATION


@dataclass(frozen=True, slots=True)
class Response:
    """A reader's response to a request (``message_type`` is the response's): its :class:`LlrpStatus` and
    whatever parameters follow it (capabilities, configuration, ROSpecs), generic."""

    message_type: int
    status: LlrpStatus = field(default_factory=LlrpStatus)
    params: tuple[Parameter, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """ERROR_MESSAGE: the reader could not handle a message (unsupported type or version, malformed); its
    message id is the offending message's."""

    status: LlrpStatus
    message_type: ClassVar[int] = MessageType.ERROR_MESSAGE


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message type without a codec here (vendor CUSTOM_MESSAGE among them): kept raw, to be skipped."""

    message_type: int
    body: bytes = b""


Message = (
    GetReaderCapabilities
    | GetReaderConfig
    | SetReaderConfig
    | AddRoSpec
    | DeleteRoSpec
    | StartRoSpec
    | StopRoSpec
    | EnableRoSpec
    | DisableRoSpec
    | GetRoSpecs
    | AddAccessSpec
    | DeleteAccessSpec
    | EnableAccessSpec
    | DisableAccessSpec
    | GetAccessSpecs
    | GetReport
    | EnableEventsAndReports
    | KeepaliveAck
    | CloseConnection
    | Keepalive
    | ReaderEventNotification
    | RoAccessReport
    | Response
    | ErrorMessage
    | UnknownMessage
)

_ROSPEC_ID = Struct("rospec_id" / Int32ub)
_ACCESS_SPEC_ID = Struct("access_spec_id" / Int32ub)
MESSAGE_FIELDS: Final[Mapping[int, Any]] = {
    MessageType.GET_READER_CAPABILITIES: Struct("requested" / Int8ub),
    MessageType.GET_READER_CONFIG: Struct(
        "antenna" / Int16ub, "requested" / Int8ub, "gpi_port" / Int16ub, "gpo_port" / Int16ub
    ),
    MessageType.SET_READER_CONFIG: Struct("flags" / _flags("reset_to_factory_default")),
    MessageType.DELETE_ROSPEC: _ROSPEC_ID,
    MessageType.START_ROSPEC: _ROSPEC_ID,
    MessageType.STOP_ROSPEC: _ROSPEC_ID,
    MessageType.ENABLE_ROSPEC: _ROSPEC_ID,
    MessageType.DISABLE_ROSPEC: _ROSPEC_ID,
    MessageType.DELETE_ACCESSSPEC: _ACCESS_SPEC_ID,
    MessageType.ENABLE_ACCESSSPEC: _ACCESS_SPEC_ID,
    MessageType.DISABLE_ACCESSSPEC: _ACCESS_SPEC_ID,
}
"""The fields a message carries before its parameters (messages not listed have none)."""
_MESSAGE_LAYOUTS: Final = {
    mtype: Struct("fields" / fields, "rest" / GreedyBytes) for mtype, fields in MESSAGE_FIELDS.items()
}
_NO_BODY: Final[Mapping[int, Callable[[], Message]]] = {
    MessageType.GET_ROSPECS: GetRoSpecs,
    MessageType.GET_ACCESSSPECS: GetAccessSpecs,
    MessageType.GET_REPORT: GetReport,
    MessageType.ENABLE_EVENTS_AND_REPORTS: EnableEventsAndReports,
    MessageType.KEEPALIVE_ACK: KeepaliveAck,
    MessageType.CLOSE_CONNECTION: CloseConnection,
    MessageType.KEEPALIVE: Keepalive,
}
_ROSPEC_COMMANDS: Final[Mapping[int, Callable[[int], Message]]] = {
    MessageType.DELETE_ROSPEC: DeleteRoSpec,
    MessageType.START_ROSPEC: StartRoSpec,
    MessageType.STOP_ROSPEC: StopRoSpec,
    MessageType.ENABLE_ROSPEC: EnableRoSpec,
    MessageType.DISABLE_ROSPEC: DisableRoSpec,
}
_ACCESS_SPEC_COMMANDS: Final[Mapping[int, Callable[[int], Message]]] = {
    MessageType.DELETE_ACCESSSPEC: DeleteAccessSpec,
    MessageType.ENABLE_ACCESSSPEC: EnableAccessSpec,
    MessageType.DISABLE_ACCESSSPEC: DisableAccessSpec,
}


def _message_body(message: Message) -> tuple[int, bytes]:
    """The message type and body of ``message``."""
    mtype = message.message_type
    if isinstance(message, RoAccessReport):
        return mtype, b"".join(
            [*(encode_tag_report(tag) for tag in message.tags), *(encode_parameter(p) for p in message.extra)]
        )
    if isinstance(message, UnknownMessage):
        return mtype, message.body
    fields: dict[str, Any] | None = None
    params: list[Parameter] = []
    if isinstance(message, GetReaderCapabilities):
        fields = {"requested": message.requested}
    elif isinstance(message, GetReaderConfig):
        fields = {
            "antenna": message.antenna,
            "requested": message.requested,
            "gpi_port": message.gpi_port,
            "gpo_port": message.gpo_port,
        }
    elif isinstance(message, SetReaderConfig):
        fields = {"flags": {"reset_to_factory_default": message.reset_to_factory_default}}
        if message.event_notifications:
            params.append(
                Parameter(
                    ParamType.READER_EVENT_NOTIFICATION_SPEC,
                    {},
                    tuple(
                        Parameter(
                            ParamType.EVENT_NOTIFICATION_STATE,
                            {"event_type": event_type, "flags": {"enabled": enabled}},
                        )
                        for event_type, enabled in message.event_notifications
                    ),
                )
            )
        if message.report is not None:
            params.append(message.report.parameter())
        if message.keepalive is not None:
            params.append(message.keepalive.parameter())
        if message.hold_events_and_reports is not None:
            params.append(
                Parameter(
                    ParamType.EVENTS_AND_REPORTS,
                    {"flags": {"hold_events_and_reports_upon_reconnect": message.hold_events_and_reports}},
                )
            )
        params.extend(message.extra)
    elif isinstance(message, AddRoSpec):
        params.append(message.rospec.parameter())
    elif isinstance(message, DeleteRoSpec | StartRoSpec | StopRoSpec | EnableRoSpec | DisableRoSpec):
        fields = {"rospec_id": message.rospec_id}
    elif isinstance(message, AddAccessSpec):
        params.append(message.access_spec.parameter())
    elif isinstance(message, DeleteAccessSpec | EnableAccessSpec | DisableAccessSpec):
        fields = {"access_spec_id": message.access_spec_id}
    elif isinstance(message, ReaderEventNotification):
        stamp = Parameter(
            ParamType.UPTIME if message.uptime else ParamType.UTC_TIMESTAMP,
            {"microseconds": message.timestamp_us},
        )
        params.append(
            Parameter(
                ParamType.READER_EVENT_NOTIFICATION_DATA,
                {},
                (stamp, *(_event_parameter(e) for e in message.events), *message.extra),
            )
        )
    elif isinstance(message, Response):
        params.append(message.status.parameter())
        params.extend(message.params)
    elif isinstance(message, ErrorMessage):
        params.append(message.status.parameter())
    body = (
        b"" if fields is None else _wrap_build(MessageType(mtype).name, MESSAGE_FIELDS[mtype].build, fields)
    )
    return mtype, body + b"".join(encode_parameter(p) for p in params)


def encode_message(message: Message, message_id: int, version: int = 1) -> bytes:
    """The bytes of ``message`` with ``message_id`` (a response reuses its request's) on the wire."""
    try:
        mtype, body = _message_body(message)
    except EncodeError:
        raise
    except (ConstructError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
        raise EncodeError(f"cannot encode {message!r}: {err}") from err
    return encode_frame(Frame(mtype, message_id, body, version))


def _status_of(params: tuple[Parameter, ...], what: str) -> tuple[LlrpStatus, tuple[Parameter, ...]]:
    if not params or params[0].type != ParamType.LLRP_STATUS:
        raise DecodeError(f"{what} without its LLRPStatus")
    return LlrpStatus.from_parameter(params[0]), params[1:]


def _parse_set_reader_config(reset: bool, params: tuple[Parameter, ...]) -> SetReaderConfig:
    events: tuple[tuple[int, bool], ...] = ()
    report: RoReportSpec | None = None
    keepalive: KeepaliveSpec | None = None
    hold: bool | None = None
    extra: list[Parameter] = []
    for param in params:
        if param.type == ParamType.READER_EVENT_NOTIFICATION_SPEC:
            events = tuple(
                (p.fields["event_type"], bool(p.fields["flags"]["enabled"]))
                for p in param.find_all(ParamType.EVENT_NOTIFICATION_STATE)
            )
        elif param.type == ParamType.RO_REPORT_SPEC:
            report = RoReportSpec.from_parameter(param)
        elif param.type == ParamType.KEEPALIVE_SPEC:
            keepalive = KeepaliveSpec.from_parameter(param)
        elif param.type == ParamType.EVENTS_AND_REPORTS:
            hold = bool(param.fields["flags"]["hold_events_and_reports_upon_reconnect"])
        else:
            extra.append(param)
    return SetReaderConfig(reset, events, report, keepalive, hold, tuple(extra))


def _parse_event_notification(params: tuple[Parameter, ...]) -> ReaderEventNotification:
    data = next((p for p in params if p.type == ParamType.READER_EVENT_NOTIFICATION_DATA), None)
    if data is None:
        raise DecodeError("READER_EVENT_NOTIFICATION without its ReaderEventNotificationData")
    timestamp: int | None = None
    uptime = False
    events: list[ReaderEvent] = []
    extra: list[Parameter] = [p for p in params if p is not data]
    for param in data.params:
        if param.type in (ParamType.UTC_TIMESTAMP, ParamType.UPTIME) and timestamp is None:
            timestamp = param.fields["microseconds"]
            uptime = param.type == ParamType.UPTIME
            continue
        event = _event_from(param)
        if event is None:
            extra.append(param)
        else:
            events.append(event)
    if timestamp is None:
        raise DecodeError("ReaderEventNotificationData without its UTCTimestamp or Uptime")
    return ReaderEventNotification(tuple(events), timestamp, uptime, tuple(extra))


def _parse_body(frame: Frame) -> Message:
    mtype = frame.message_type
    body = frame.body
    if mtype == MessageType.RO_ACCESS_REPORT:
        return parse_ro_access_report(body)
    if mtype in _NO_BODY:
        if body:
            raise DecodeError(f"{MessageType(mtype).name} has no body, {len(body)} bytes given")
        return _NO_BODY[mtype]()
    fields: Any = None
    if mtype in _MESSAGE_LAYOUTS:
        try:
            parsed = _MESSAGE_LAYOUTS[mtype].parse(body)
        except ConstructError as err:
            raise DecodeError(f"{MessageType(mtype).name}: {len(body)} bytes do not hold its fields") from err
        fields = parsed.fields
        body = bytes(parsed.rest)
    if mtype in _ROSPEC_COMMANDS:
        if body:
            raise DecodeError(f"{MessageType(mtype).name} takes no parameters, {len(body)} bytes follow")
        return _ROSPEC_COMMANDS[mtype](fields.rospec_id)
    if mtype in _ACCESS_SPEC_COMMANDS:
        if body:
            raise DecodeError(f"{MessageType(mtype).name} takes no parameters, {len(body)} bytes follow")
        return _ACCESS_SPEC_COMMANDS[mtype](fields.access_spec_id)
    if mtype not in _KNOWN_MESSAGES:
        return UnknownMessage(mtype, frame.body)
    name = MessageType(mtype).name
    params = decode_parameters(body, name)
    if mtype == MessageType.READER_EVENT_NOTIFICATION:
        return _parse_event_notification(params)
    if mtype in _STATUS_RESPONSES:
        status, rest = _status_of(params, name)
        return Response(mtype, status, rest)
    if mtype == MessageType.ERROR_MESSAGE:
        status, _ = _status_of(params, name)
        return ErrorMessage(status)
    if mtype == MessageType.GET_READER_CAPABILITIES:
        _no_params(name, params)
        return GetReaderCapabilities(fields.requested)
    if mtype == MessageType.GET_READER_CONFIG:
        _no_params(name, params)
        return GetReaderConfig(fields.antenna, fields.requested, fields.gpi_port, fields.gpo_port)
    if mtype == MessageType.SET_READER_CONFIG:
        return _parse_set_reader_config(bool(fields.flags.reset_to_factory_default), params)
    if mtype == MessageType.ADD_ACCESSSPEC:
        specs = [p for p in params if p.type == ParamType.ACCESS_SPEC]
        if len(specs) != 1:
            raise DecodeError(f"ADD_ACCESSSPEC carries {len(specs)} AccessSpecs, exactly one expected")
        return AddAccessSpec(AccessSpec.from_parameter(specs[0]))
    # ADD_ROSPEC
    rospecs = [p for p in params if p.type == ParamType.ROSPEC]
    if len(rospecs) != 1:
        raise DecodeError(f"ADD_ROSPEC carries {len(rospecs)} ROSpecs, exactly one expected")
    return AddRoSpec(RoSpec.from_parameter(rospecs[0]))


def _no_params(name: str, params: tuple[Parameter, ...]) -> None:
    unexpected = [p for p in params if p.type != CUSTOM]
    if unexpected:
        raise DecodeError(f"{name}: unexpected parameter {unexpected[0].name}")


_KNOWN_MESSAGES: Final = frozenset(
    {
        MessageType.READER_EVENT_NOTIFICATION,
        MessageType.ERROR_MESSAGE,
        MessageType.GET_READER_CAPABILITIES,
        MessageType.GET_READER_CONFIG,
        MessageType.SET_READER_CONFIG,
        MessageType.ADD_ROSPEC,
        MessageType.ADD_ACCESSSPEC,
        *_STATUS_RESPONSES,
    }
)


def parse_message(frame: Frame) -> Message:
    """The message in ``frame``; a type without a codec here is an :class:`UnknownMessage`; DecodeError if
    the body does not decode (the stream is still framed: the caller skips this message and goes on)."""
    try:
        return _parse_body(frame)
    except DecodeError:
        raise
    except (ConstructError, ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        name = MessageType(frame.message_type).name if frame.message_type in _MESSAGE_NAMES else "message"
        raise DecodeError(f"{name} ({frame.message_type}): {err}") from err


_MESSAGE_NAMES: Final = frozenset(int(t) for t in MessageType)
