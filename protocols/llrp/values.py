"""Typed forms of the parameters a client sets and reads (status, report spec, ROSpec, capabilities), each
converted to and from the generic :class:`~protocols.llrp.params.Parameter` tree."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from protocols.errors import DecodeError

from .constants import (
    AIR_PROTOCOL_C1G2,
    AccessSpecStopTriggerType,
    ParamType,
    ReportTrigger,
    RoSpecState,
    StartTrigger,
    StatusCode,
    StopTrigger,
    TagObservationType,
)
from .params import Parameter, parameter_name


@dataclass(frozen=True, slots=True)
class LlrpStatus:
    """LLRPStatus: a response's verdict. ``field_error`` is (field number, code); ``parameter_error``
    (parameter type, code) of the offending parameter."""

    code: int = StatusCode.M_SUCCESS
    description: str = ""
    field_error: tuple[int, int] | None = None
    parameter_error: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.code == StatusCode.M_SUCCESS

    def __str__(self) -> str:
        try:
            name = StatusCode(self.code).name
        except ValueError:
            name = "status"
        text = f"{name} ({self.code})"
        if self.description:
            text += f": {self.description}"
        if self.parameter_error is not None:
            text += f" [parameter {parameter_name(self.parameter_error[0])}, code {self.parameter_error[1]}]"
        if self.field_error is not None:
            text += f" [field {self.field_error[0]}, code {self.field_error[1]}]"
        return text

    def parameter(self) -> Parameter:
        params: list[Parameter] = []
        if self.field_error is not None:
            params.append(
                Parameter(
                    ParamType.FIELD_ERROR,
                    dict(zip(("field_num", "error_code"), self.field_error, strict=True)),
                )
            )
        if self.parameter_error is not None:
            params.append(
                Parameter(
                    ParamType.PARAMETER_ERROR,
                    dict(zip(("parameter_type", "error_code"), self.parameter_error, strict=True)),
                )
            )
        return Parameter(
            ParamType.LLRP_STATUS, {"status_code": self.code, "description": self.description}, tuple(params)
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> LlrpStatus:
        field_error = param.find(ParamType.FIELD_ERROR)
        parameter_error = param.find(ParamType.PARAMETER_ERROR)
        return cls(
            param.fields["status_code"],
            param.fields["description"],
            None
            if field_error is None
            else (field_error.fields["field_num"], field_error.fields["error_code"]),
            None
            if parameter_error is None
            else (parameter_error.fields["parameter_type"], parameter_error.fields["error_code"]),
        )


@dataclass(frozen=True, slots=True)
class TagReportContent:
    """What each TagReportData carries besides the EPC (TagReportContentSelector and, for Gen2 tags,
    C1G2EPCMemorySelector)."""

    rospec_id: bool = False
    spec_index: bool = False
    inventory_parameter_spec_id: bool = False
    antenna: bool = True
    channel_index: bool = True
    peak_rssi: bool = True
    first_seen: bool = True
    last_seen: bool = False
    seen_count: bool = True
    access_spec_id: bool = False
    crc: bool = False
    pc: bool = True
    xpc: bool = False

    _SELECTOR: ClassVar[tuple[tuple[str, str], ...]] = (
        ("rospec_id", "rospec_id"),
        ("spec_index", "spec_index"),
        ("inventory_parameter_spec_id", "inventory_parameter_spec_id"),
        ("antenna_id", "antenna"),
        ("channel_index", "channel_index"),
        ("peak_rssi", "peak_rssi"),
        ("first_seen_timestamp", "first_seen"),
        ("last_seen_timestamp", "last_seen"),
        ("tag_seen_count", "seen_count"),
        ("access_spec_id", "access_spec_id"),
    )

    def parameter(self) -> Parameter:
        memory = Parameter(
            ParamType.C1G2_EPC_MEMORY_SELECTOR,
            {"flags": {"crc_enabled": self.crc, "pc_bits_enabled": self.pc, "xpc_bits_enabled": self.xpc}},
        )
        flags = {wire: getattr(self, name) for wire, name in self._SELECTOR}
        return Parameter(ParamType.TAG_REPORT_CONTENT_SELECTOR, {"flags": flags}, (memory,))

    @classmethod
    def from_parameter(cls, param: Parameter) -> TagReportContent:
        flags = param.fields["flags"]
        values = {name: bool(flags[wire]) for wire, name in cls._SELECTOR}
        memory = param.find(ParamType.C1G2_EPC_MEMORY_SELECTOR)
        if memory is None:
            values.update(crc=False, pc=False, xpc=False)
        else:
            mflags = memory.fields["flags"]
            values.update(
                crc=bool(mflags["crc_enabled"]),
                pc=bool(mflags["pc_bits_enabled"]),
                xpc=bool(mflags["xpc_bits_enabled"]),
            )
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RoReportSpec:
    """ROReportSpec: when the reader sends an RO_ACCESS_REPORT (``trigger`` and ``n``: with the N-tags
    triggers, every ``n`` TagReportData, 0 meaning only at the end of the spec) and what it holds."""

    trigger: int = ReportTrigger.N_TAGS_OR_END_OF_ROSPEC
    n: int = 0
    content: TagReportContent = field(default_factory=TagReportContent)

    def parameter(self) -> Parameter:
        return Parameter(
            ParamType.RO_REPORT_SPEC, {"trigger": self.trigger, "n": self.n}, (self.content.parameter(),)
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> RoReportSpec:
        selector = param.find(ParamType.TAG_REPORT_CONTENT_SELECTOR)
        if selector is None:
            raise DecodeError("ROReportSpec without its TagReportContentSelector")
        return cls(param.fields["trigger"], param.fields["n"], TagReportContent.from_parameter(selector))


@dataclass(frozen=True, slots=True)
class KeepaliveSpec:
    """KeepaliveSpec: ``periodic`` asks for a KEEPALIVE every ``period_ms``; not periodic turns them off."""

    periodic: bool = True
    period_ms: int = 10_000

    def parameter(self) -> Parameter:
        return Parameter(
            ParamType.KEEPALIVE_SPEC, {"trigger": int(self.periodic), "period_ms": self.period_ms}
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> KeepaliveSpec:
        return cls(param.fields["trigger"] == 1, param.fields["period_ms"])


@dataclass(frozen=True, slots=True)
class TagObservation:
    """TagObservationTrigger: when an AISpec whose stop trigger is TAG_OBSERVATION ends (``trigger``, a
    :class:`TagObservationType`): after ``number_of_tags`` observations (or distinct tags), after
    ``number_of_attempts`` inventory rounds, or when nothing new came for ``t_ms``; always at ``timeout_ms``
    when that is not 0. What sllurp's ``report_every_n_tags`` sends: N tags, its ``report_timeout_ms``."""

    trigger: int = TagObservationType.N_TAGS_OR_TIMEOUT
    number_of_tags: int = 0
    number_of_attempts: int = 0
    t_ms: int = 0
    timeout_ms: int = 0

    def parameter(self) -> Parameter:
        return Parameter(
            ParamType.TAG_OBSERVATION_TRIGGER,
            {
                "trigger": self.trigger,
                "number_of_tags": self.number_of_tags,
                "number_of_attempts": self.number_of_attempts,
                "t_ms": self.t_ms,
                "timeout_ms": self.timeout_ms,
            },
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> TagObservation:
        f = param.fields
        return cls(f["trigger"], f["number_of_tags"], f["number_of_attempts"], f["t_ms"], f["timeout_ms"])


@dataclass(frozen=True, slots=True)
class AiSpec:
    """AISpec: an inventory on ``antennas`` (0 alone: every antenna) until its stop trigger, with one
    InventoryParameterSpec per (id, air protocol) in ``inventory`` (AntennaConfiguration and vendor
    parameters inside them are not modelled). A TAG_OBSERVATION stop trigger carries its
    ``tag_observation``; the codec does not insist on it, a reader refuses an AISpec without it."""

    antennas: tuple[int, ...] = (0,)
    stop_trigger: int = StopTrigger.NULL
    duration_ms: int = 0
    inventory: tuple[tuple[int, int], ...] = ((1, AIR_PROTOCOL_C1G2),)
    tag_observation: TagObservation | None = None

    def parameter(self) -> Parameter:
        stop = Parameter(
            ParamType.AISPEC_STOP_TRIGGER,
            {"trigger": self.stop_trigger, "duration_ms": self.duration_ms},
            () if self.tag_observation is None else (self.tag_observation.parameter(),),
        )
        specs = tuple(
            Parameter(ParamType.INVENTORY_PARAMETER_SPEC, {"spec_id": spec_id, "protocol_id": protocol})
            for spec_id, protocol in self.inventory
        )
        return Parameter(ParamType.AISPEC, {"antennas": list(self.antennas)}, (stop, *specs))

    @classmethod
    def from_parameter(cls, param: Parameter) -> AiSpec:
        stop = param.find(ParamType.AISPEC_STOP_TRIGGER)
        if stop is None:
            raise DecodeError("AISpec without its AISpecStopTrigger")
        inventory = tuple(
            (p.fields["spec_id"], p.fields["protocol_id"])
            for p in param.find_all(ParamType.INVENTORY_PARAMETER_SPEC)
        )
        if not inventory:
            raise DecodeError("AISpec without an InventoryParameterSpec")
        observation = stop.find(ParamType.TAG_OBSERVATION_TRIGGER)
        return cls(
            tuple(param.fields["antennas"]),
            stop.fields["trigger"],
            stop.fields["duration_ms"],
            inventory,
            None if observation is None else TagObservation.from_parameter(observation),
        )


@dataclass(frozen=True, slots=True)
class RoSpec:
    """ROSpec: a reader operation. ``start_trigger`` NULL waits for START_ROSPEC; PERIODIC starts every
    ``start_period_ms`` after ``start_offset_ms``; ``stop_trigger`` NULL runs until every AISpec is done
    (forever when theirs are NULL too); DURATION stops after ``stop_duration_ms``. ``report`` overrides the
    reader's default ROReportSpec."""

    rospec_id: int
    ai_specs: tuple[AiSpec, ...] = (AiSpec(),)
    priority: int = 0
    state: int = RoSpecState.DISABLED
    start_trigger: int = StartTrigger.NULL
    start_offset_ms: int = 0
    start_period_ms: int = 0
    stop_trigger: int = StopTrigger.NULL
    stop_duration_ms: int = 0
    report: RoReportSpec | None = None

    def parameter(self) -> Parameter:
        start_params: tuple[Parameter, ...] = ()
        if self.start_trigger == StartTrigger.PERIODIC:
            start_params = (
                Parameter(
                    ParamType.PERIODIC_TRIGGER_VALUE,
                    {"offset_ms": self.start_offset_ms, "period_ms": self.start_period_ms},
                ),
            )
        boundary = Parameter(
            ParamType.RO_BOUNDARY_SPEC,
            {},
            (
                Parameter(ParamType.ROSPEC_START_TRIGGER, {"trigger": self.start_trigger}, start_params),
                Parameter(
                    ParamType.ROSPEC_STOP_TRIGGER,
                    {"trigger": self.stop_trigger, "duration_ms": self.stop_duration_ms},
                ),
            ),
        )
        report = () if self.report is None else (self.report.parameter(),)
        return Parameter(
            ParamType.ROSPEC,
            {"rospec_id": self.rospec_id, "priority": self.priority, "current_state": self.state},
            (boundary, *(spec.parameter() for spec in self.ai_specs), *report),
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> RoSpec:
        boundary = param.find(ParamType.RO_BOUNDARY_SPEC)
        start = None if boundary is None else boundary.find(ParamType.ROSPEC_START_TRIGGER)
        stop = None if boundary is None else boundary.find(ParamType.ROSPEC_STOP_TRIGGER)
        if start is None or stop is None:
            raise DecodeError("ROSpec without a whole ROBoundarySpec")
        periodic = start.find(ParamType.PERIODIC_TRIGGER_VALUE)
        report = param.find(ParamType.RO_REPORT_SPEC)
        return cls(
            param.fields["rospec_id"],
            tuple(AiSpec.from_parameter(p) for p in param.find_all(ParamType.AISPEC)),
            param.fields["priority"],
            param.fields["current_state"],
            start.fields["trigger"],
            0 if periodic is None else periodic.fields["offset_ms"],
            0 if periodic is None else periodic.fields["period_ms"],
            stop.fields["trigger"],
            stop.fields["duration_ms"],
            None if report is None else RoReportSpec.from_parameter(report),
        )


@dataclass(frozen=True, slots=True)
class AccessSpec:
    """AccessSpec: operations (read, write, lock, kill... of tag memory) a reader runs on the tags its
    ROSpec ``rospec_id`` (0: any) singulates on ``antenna`` (0: any) that match the C1G2TagSpec. ``command``
    holds the AccessCommand's parameters as they are (the C1G2TagSpec, then the OpSpecs: ``C1G2Read``,
    ``C1G2Write``...); ``stop_trigger`` OPERATION_COUNT deletes it after ``operation_count`` runs;
    ``report_trigger`` is its AccessReportSpec's, when it has one. ``extra``: vendor parameters."""

    access_spec_id: int
    command: tuple[Parameter, ...]
    antenna: int = 0
    protocol: int = AIR_PROTOCOL_C1G2
    enabled: bool = False
    rospec_id: int = 0
    stop_trigger: int = AccessSpecStopTriggerType.NULL
    operation_count: int = 0
    report_trigger: int | None = None
    extra: tuple[Parameter, ...] = ()

    def parameter(self) -> Parameter:
        stop = Parameter(
            ParamType.ACCESS_SPEC_STOP_TRIGGER,
            {"trigger": self.stop_trigger, "operation_count": self.operation_count},
        )
        command = Parameter(ParamType.ACCESS_COMMAND, {}, self.command)
        report = (
            ()
            if self.report_trigger is None
            else (Parameter(ParamType.ACCESS_REPORT_SPEC, {"trigger": self.report_trigger}),)
        )
        return Parameter(
            ParamType.ACCESS_SPEC,
            {
                "access_spec_id": self.access_spec_id,
                "antenna": self.antenna,
                "protocol_id": self.protocol,
                "flags": {"current_state": self.enabled},
                "rospec_id": self.rospec_id,
            },
            (stop, command, *report, *self.extra),
        )

    @classmethod
    def from_parameter(cls, param: Parameter) -> AccessSpec:
        stop = param.find(ParamType.ACCESS_SPEC_STOP_TRIGGER)
        command = param.find(ParamType.ACCESS_COMMAND)
        if stop is None or command is None:
            raise DecodeError("AccessSpec without its AccessSpecStopTrigger and AccessCommand")
        report = param.find(ParamType.ACCESS_REPORT_SPEC)
        known = {ParamType.ACCESS_SPEC_STOP_TRIGGER, ParamType.ACCESS_COMMAND, ParamType.ACCESS_REPORT_SPEC}
        f = param.fields
        return cls(
            access_spec_id=f["access_spec_id"],
            command=command.params,
            antenna=f["antenna"],
            protocol=f["protocol_id"],
            enabled=bool(f["flags"]["current_state"]),
            rospec_id=f["rospec_id"],
            stop_trigger=stop.fields["trigger"],
            operation_count=stop.fields["operation_count"],
            report_trigger=None if report is None else report.fields["trigger"],
            extra=tuple(p for p in param.params if p.type not in known),
        )


@dataclass(frozen=True, slots=True)
class DeviceCapabilities:
    """The part of GeneralDeviceCapabilities a client acts on. ``manufacturer`` is an IANA private
    enterprise number (25882: Impinj)."""

    max_antennas: int
    manufacturer: int
    model: int
    firmware: str
    has_utc_clock: bool = True
    can_set_antenna_properties: bool = False


def device_capabilities(params: Iterable[Parameter]) -> DeviceCapabilities | None:
    """The GeneralDeviceCapabilities among ``params`` (a GET_READER_CAPABILITIES_RESPONSE's), if any."""
    for param in params:
        if param.type == ParamType.GENERAL_DEVICE_CAPABILITIES:
            fields = param.fields
            return DeviceCapabilities(
                fields["max_antennas"],
                fields["manufacturer"],
                fields["model"],
                fields["firmware_version"],
                bool(fields["flags"]["has_utc_clock"]),
                bool(fields["flags"]["can_set_antenna_properties"]),
            )
    return None


def transmit_power_table(params: Iterable[Parameter]) -> dict[int, int]:
    """The reader's transmit power levels, index -> centi-dBm: the TransmitPowerLevelTableEntry parameters
    of a GET_READER_CAPABILITIES_RESPONSE (in RegulatoryCapabilities / UHFBandCapabilities). An
    RFTransmitter names its power by such an index."""
    table: dict[int, int] = {}
    stack = list(params)
    while stack:
        param = stack.pop()
        if param.type == ParamType.TRANSMIT_POWER_LEVEL_TABLE_ENTRY:
            table[param.fields["index"]] = param.fields["transmit_power_cdbm"]
        else:
            stack.extend(param.params)
    return dict(sorted(table.items()))


def antenna_power(antenna: int, power_index: int, hop_table_id: int = 1, channel_index: int = 1) -> Parameter:
    """An AntennaConfiguration for SET_READER_CONFIG that sets ``antenna``'s transmit power (an index of
    :func:`transmit_power_table`) through its RFTransmitter; antenna 0 means every antenna. A hopping reader
    ignores the channel index; the hop table is the one the reader offers (1 on most)."""
    transmitter = Parameter(
        ParamType.RF_TRANSMITTER,
        {"hop_table_id": hop_table_id, "channel_index": channel_index, "transmit_power_index": power_index},
    )
    return Parameter(ParamType.ANTENNA_CONFIGURATION, {"antenna": antenna}, (transmitter,))


def capabilities_parameters(
    caps: DeviceCapabilities, power_table_cdbm: Sequence[int] = (3000,)
) -> tuple[Parameter, ...]:
    """A GET_READER_CAPABILITIES_RESPONSE's parameters after LLRPStatus, for a reader with ``caps``: what the
    standard requires of each (one receive sensitivity, GPIO counts, Gen2 on every antenna, one RF mode, a
    hop table), and its transmit power levels (indices from 1, in centi-dBm), for a simulator to send."""
    antennas = range(1, caps.max_antennas + 1)
    general = Parameter(
        ParamType.GENERAL_DEVICE_CAPABILITIES,
        {
            "max_antennas": caps.max_antennas,
            "flags": {
                "can_set_antenna_properties": caps.can_set_antenna_properties,
                "has_utc_clock": caps.has_utc_clock,
            },
            "manufacturer": caps.manufacturer,
            "model": caps.model,
            "firmware_version": caps.firmware,
        },
        (
            Parameter(ParamType.RECEIVE_SENSITIVITY_TABLE_ENTRY, {"index": 1, "receive_sensitivity_db": 0}),
            Parameter(ParamType.GPIO_CAPABILITIES, {"gpis": 0, "gpos": 0}),
            *(
                Parameter(
                    ParamType.PER_ANTENNA_AIR_PROTOCOL,
                    {"antenna": antenna, "protocol_ids": [AIR_PROTOCOL_C1G2]},
                )
                for antenna in antennas
            ),
        ),
    )
    llrp = Parameter(
        ParamType.LLRP_CAPABILITIES,
        {
            "flags": {
                "can_do_rf_survey": False,
                "can_report_buffer_fill_warning": True,
                "supports_client_request_opspec": False,
                "can_do_tag_inventory_state_aware_singulation": False,
                "supports_event_and_report_holding": False,
            },
            "max_priority_level": 1,
            "client_request_opspec_timeout_ms": 0,
            "max_rospecs": 1,
            "max_specs_per_rospec": 1,
            "max_inventory_parameter_specs_per_aispec": 1,
            "max_access_specs": 0,
            "max_opspecs_per_access_spec": 0,
        },
    )
    mode = Parameter(
        ParamType.C1G2_UHF_RF_MODE_TABLE_ENTRY,
        {
            "mode_id": 1,
            "flags": {"divide_ratio_64_3": True, "epc_hag_conformant": False},
            "modulation": 1,
            "forward_link_modulation": 2,
            "spectral_mask": 2,
            "backscatter_data_rate": 640_000,
            "pie_ratio": 1500,
            "min_tari_ns": 6250,
            "max_tari_ns": 6250,
            "step_tari_ns": 0,
        },
    )
    uhf = Parameter(
        ParamType.UHF_BAND_CAPABILITIES,
        {},
        (
            *(
                Parameter(
                    ParamType.TRANSMIT_POWER_LEVEL_TABLE_ENTRY, {"index": i, "transmit_power_cdbm": cdbm}
                )
                for i, cdbm in enumerate(power_table_cdbm, start=1)
            ),
            Parameter(
                ParamType.FREQUENCY_INFORMATION,
                {"flags": {"hopping": True}},
                (
                    Parameter(
                        ParamType.FREQUENCY_HOP_TABLE,
                        {"hop_table_id": 1, "frequencies_khz": [902_750 + 500 * i for i in range(50)]},
                    ),
                ),
            ),
            Parameter(ParamType.C1G2_UHF_RF_MODE_TABLE, {}, (mode,)),
        ),
    )
    regulatory = Parameter(
        ParamType.REGULATORY_CAPABILITIES, {"country_code": 840, "communications_standard": 1}, (uhf,)
    )
    c1g2 = Parameter(
        ParamType.C1G2_LLRP_CAPABILITIES,
        {
            "flags": {
                "supports_block_erase": False,
                "supports_block_write": False,
                "supports_block_permalock": False,
                "supports_tag_recommissioning": False,
                "supports_umi_method_2": False,
                "supports_xpc": False,
            },
            "max_select_filters_per_query": 0,
        },
    )
    return (general, llrp, regulatory, c1g2)
