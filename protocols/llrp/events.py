"""The reader events of READER_EVENT_NOTIFICATION, typed."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import _CONNECTION_ATTEMPT_TEXT, ConnectionAttemptStatus, ParamType
from .params import Parameter


@dataclass(frozen=True, slots=True)
class ConnectionAttemptEvent:
    """The reader's word on a new connection: only status 0 (success) lets the client in."""

    status: int = ConnectionAttemptStatus.SUCCESS

    @property
    def ok(self) -> bool:
        return self.status == ConnectionAttemptStatus.SUCCESS

    @property
    def text(self) -> str:
        return _CONNECTION_ATTEMPT_TEXT.get(self.status, f"unknown status {self.status}")


@dataclass(frozen=True, slots=True)
class ConnectionCloseEvent:
    """The reader is about to close the connection."""


@dataclass(frozen=True, slots=True)
class AntennaEvent:
    antenna: int
    connected: bool


@dataclass(frozen=True, slots=True)
class BufferLevelWarningEvent:
    """The reader's report buffer is filling up (reports are not read fast enough)."""

    percent_full: int


@dataclass(frozen=True, slots=True)
class BufferOverflowEvent:
    """The reader's report buffer overflowed: reports were lost."""


@dataclass(frozen=True, slots=True)
class ReaderExceptionEvent:
    message: str
    params: tuple[Parameter, ...] = ()
    """ROSpecID, AntennaID and the like, as the reader gave them."""


@dataclass(frozen=True, slots=True)
class RoSpecEvent:
    """ROSpec started (0), ended (1) or was preempted (2)."""

    event_type: int
    rospec_id: int
    preempting_rospec_id: int = 0


@dataclass(frozen=True, slots=True)
class AiSpecEvent:
    event_type: int
    rospec_id: int
    spec_index: int
    params: tuple[Parameter, ...] = ()


@dataclass(frozen=True, slots=True)
class HoppingEvent:
    hop_table_id: int
    next_channel_index: int


@dataclass(frozen=True, slots=True)
class GpiEvent:
    port: int
    high: bool


@dataclass(frozen=True, slots=True)
class RfSurveyEvent:
    event_type: int
    rospec_id: int
    spec_index: int


@dataclass(frozen=True, slots=True)
class SpecLoopEvent:
    rospec_id: int
    loop_count: int


ReaderEvent = (
    ConnectionAttemptEvent
    | ConnectionCloseEvent
    | AntennaEvent
    | BufferLevelWarningEvent
    | BufferOverflowEvent
    | ReaderExceptionEvent
    | RoSpecEvent
    | AiSpecEvent
    | HoppingEvent
    | GpiEvent
    | RfSurveyEvent
    | SpecLoopEvent
)


def _event_from(param: Parameter) -> ReaderEvent | None:
    f = param.fields
    ptype = param.type
    if ptype == ParamType.CONNECTION_ATTEMPT_EVENT:
        return ConnectionAttemptEvent(f["status"])
    if ptype == ParamType.CONNECTION_CLOSE_EVENT:
        return ConnectionCloseEvent()
    if ptype == ParamType.ANTENNA_EVENT:
        return AntennaEvent(f["antenna"], f["event_type"] == 1)
    if ptype == ParamType.REPORT_BUFFER_LEVEL_WARNING_EVENT:
        return BufferLevelWarningEvent(f["percent_full"])
    if ptype == ParamType.REPORT_BUFFER_OVERFLOW_ERROR_EVENT:
        return BufferOverflowEvent()
    if ptype == ParamType.READER_EXCEPTION_EVENT:
        return ReaderExceptionEvent(f["message"], param.params)
    if ptype == ParamType.ROSPEC_EVENT:
        return RoSpecEvent(f["event_type"], f["rospec_id"], f["preempting_rospec_id"])
    if ptype == ParamType.AISPEC_EVENT:
        return AiSpecEvent(f["event_type"], f["rospec_id"], f["spec_index"], param.params)
    if ptype == ParamType.HOPPING_EVENT:
        return HoppingEvent(f["hop_table_id"], f["next_channel_index"])
    if ptype == ParamType.GPI_EVENT:
        return GpiEvent(f["gpi_port"], bool(f["flags"]["gpi_event"]))
    if ptype == ParamType.RF_SURVEY_EVENT:
        return RfSurveyEvent(f["event_type"], f["rospec_id"], f["spec_index"])
    if ptype == ParamType.SPEC_LOOP_EVENT:
        return SpecLoopEvent(f["rospec_id"], f["loop_count"])
    return None


def _event_parameter(event: ReaderEvent) -> Parameter:
    if isinstance(event, ConnectionAttemptEvent):
        return Parameter(ParamType.CONNECTION_ATTEMPT_EVENT, {"status": event.status})
    if isinstance(event, ConnectionCloseEvent):
        return Parameter(ParamType.CONNECTION_CLOSE_EVENT)
    if isinstance(event, AntennaEvent):
        return Parameter(
            ParamType.ANTENNA_EVENT, {"event_type": int(event.connected), "antenna": event.antenna}
        )
    if isinstance(event, BufferLevelWarningEvent):
        return Parameter(ParamType.REPORT_BUFFER_LEVEL_WARNING_EVENT, {"percent_full": event.percent_full})
    if isinstance(event, BufferOverflowEvent):
        return Parameter(ParamType.REPORT_BUFFER_OVERFLOW_ERROR_EVENT)
    if isinstance(event, ReaderExceptionEvent):
        return Parameter(ParamType.READER_EXCEPTION_EVENT, {"message": event.message}, event.params)
    if isinstance(event, RoSpecEvent):
        return Parameter(
            ParamType.ROSPEC_EVENT,
            {
                "event_type": event.event_type,
                "rospec_id": event.rospec_id,
                "preempting_rospec_id": event.preempting_rospec_id,
            },
        )
    if isinstance(event, AiSpecEvent):
        return Parameter(
            ParamType.AISPEC_EVENT,
            {"event_type": event.event_type, "rospec_id": event.rospec_id, "spec_index": event.spec_index},
            event.params,
        )
    if isinstance(event, HoppingEvent):
        return Parameter(
            ParamType.HOPPING_EVENT,
            {"hop_table_id": event.hop_table_id, "next_channel_index": event.next_channel_index},
        )
    if isinstance(event, GpiEvent):
        return Parameter(ParamType.GPI_EVENT, {"gpi_port": event.port, "flags": {"gpi_event": event.high}})
    if isinstance(event, RfSurveyEvent):
        return Parameter(
            ParamType.RF_SURVEY_EVENT,
            {"event_type": event.event_type, "rospec_id": event.rospec_id, "spec_index": event.spec_index},
        )
    return Parameter(
        ParamType.SPEC_LOOP_EVENT, {"rospec_id": event.rospec_id, "loop_count": event.loop_count}
    )
