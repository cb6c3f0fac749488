"""LLRP parameters: one construct definition per parameter type, read and written through the same
definitions; the generic :class:`Parameter` tree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    ConstructError,
    ExprAdapter,
    Flag,
    GreedyBytes,
    Int8sb,
    Int8ub,
    Int16sb,
    Int16ub,
    Int32ub,
    Int64ub,
    Padding,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
    this,
)

from protocols.errors import DecodeError, EncodeError

from .constants import CUSTOM, ParamType

_UTF8 = ExprAdapter(
    Prefixed(Int16ub, GreedyBytes),
    decoder=lambda obj, ctx: bytes(obj).decode("utf-8", "replace"),
    encoder=lambda obj, ctx: str(obj).encode("utf-8"),
)
"""UTF-8 string: u16 byte count, then the bytes (undecodable bytes are replaced, not fatal)."""
_BYTES = Prefixed(Int16ub, GreedyBytes)
"""u8v: u16 count, then bytes."""
_U16V = PrefixedArray(Int16ub, Int16ub)
_U32V = PrefixedArray(Int16ub, Int32ub)
_BITS_ARRAY = Struct("bits" / Int16ub, "data" / Bytes((this.bits + 7) // 8))
"""u1v: u16 count of bits, then that many bits padded to whole bytes."""
_MEMORY_BANK = BitStruct("memory_bank" / BitsInteger(2), Padding(6))
"""A Gen2 memory bank (0 reserved, 1 EPC, 2 TID, 3 user) in the top two bits of a byte."""


def _flags(*names: str) -> Any:
    """A byte (or two) of one-bit flags, most significant bit first, padded with reserved bits."""
    pad = -len(names) % 8
    return BitStruct(*(name / Flag for name in names), *((Padding(pad),) if pad else ()))


TV_VALUES: Final[Mapping[int, Any]] = {
    ParamType.ANTENNA_ID: Int16ub,
    ParamType.FIRST_SEEN_TIMESTAMP_UTC: Int64ub,
    ParamType.FIRST_SEEN_TIMESTAMP_UPTIME: Int64ub,
    ParamType.LAST_SEEN_TIMESTAMP_UTC: Int64ub,
    ParamType.LAST_SEEN_TIMESTAMP_UPTIME: Int64ub,
    ParamType.PEAK_RSSI: Int8sb,
    ParamType.CHANNEL_INDEX: Int16ub,
    ParamType.TAG_SEEN_COUNT: Int16ub,
    ParamType.ROSPEC_ID: Int32ub,
    ParamType.INVENTORY_PARAMETER_SPEC_ID: Int16ub,
    ParamType.C1G2_CRC: Int16ub,
    ParamType.C1G2_PC: Int16ub,
    ParamType.EPC_96: Bytes(12),
    ParamType.SPEC_INDEX: Int16ub,
    ParamType.CLIENT_REQUEST_OPSPEC_RESULT: Int16ub,
    ParamType.ACCESS_SPEC_ID: Int32ub,
    ParamType.OPSPEC_ID: Int16ub,
    ParamType.C1G2_SINGULATION_DETAILS: Struct("collision_slots" / Int16ub, "empty_slots" / Int16ub),
    ParamType.C1G2_XPC_W1: Int16ub,
    ParamType.C1G2_XPC_W2: Int16ub,
}
"""The value of each TV parameter (its size is the type's: there is no length on the wire)."""
_TV_SIZE: Final = bytes(TV_VALUES[t].sizeof() if t in TV_VALUES else 0 for t in range(128))


@dataclass(frozen=True, slots=True)
class _TlvSpec:
    name: str
    fields: Any = None
    """The construct of the fixed fields; None: no fields."""
    children: bool = False
    """Sub-parameters may follow the fields."""
    opaque: bool = False
    """Layout not modelled here: the body is kept as bytes."""


def _spec(name: str, *subcons: Any, children: bool = False) -> _TlvSpec:
    return _TlvSpec(name, Struct(*subcons) if subcons else None, children)


P = ParamType
TLV_SPECS: Final[Mapping[int, _TlvSpec]] = {
    P.UTC_TIMESTAMP: _spec("UTCTimestamp", "microseconds" / Int64ub),
    P.UPTIME: _spec("Uptime", "microseconds" / Int64ub),
    P.GENERAL_DEVICE_CAPABILITIES: _spec(
        "GeneralDeviceCapabilities",
        "max_antennas" / Int16ub,
        "flags" / BitStruct("can_set_antenna_properties" / Flag, "has_utc_clock" / Flag, Padding(14)),
        "manufacturer" / Int32ub,
        "model" / Int32ub,
        "firmware_version" / _UTF8,
        children=True,
    ),
    P.RECEIVE_SENSITIVITY_TABLE_ENTRY: _spec(
        "ReceiveSensitivityTableEntry", "index" / Int16ub, "receive_sensitivity_db" / Int16sb
    ),
    P.PER_ANTENNA_AIR_PROTOCOL: _spec(
        "PerAntennaAirProtocol", "antenna" / Int16ub, "protocol_ids" / PrefixedArray(Int16ub, Int8ub)
    ),
    P.GPIO_CAPABILITIES: _spec("GPIOCapabilities", "gpis" / Int16ub, "gpos" / Int16ub),
    P.LLRP_CAPABILITIES: _spec(
        "LLRPCapabilities",
        "flags"
        / _flags(
            "can_do_rf_survey",
            "can_report_buffer_fill_warning",
            "supports_client_request_opspec",
            "can_do_tag_inventory_state_aware_singulation",
            "supports_event_and_report_holding",
        ),
        "max_priority_level" / Int8ub,
        "client_request_opspec_timeout_ms" / Int16ub,
        "max_rospecs" / Int32ub,
        "max_specs_per_rospec" / Int32ub,
        "max_inventory_parameter_specs_per_aispec" / Int32ub,
        "max_access_specs" / Int32ub,
        "max_opspecs_per_access_spec" / Int32ub,
    ),
    P.REGULATORY_CAPABILITIES: _spec(
        "RegulatoryCapabilities", "country_code" / Int16ub, "communications_standard" / Int16ub, children=True
    ),
    P.UHF_BAND_CAPABILITIES: _spec("UHFBandCapabilities", children=True),
    P.TRANSMIT_POWER_LEVEL_TABLE_ENTRY: _spec(
        "TransmitPowerLevelTableEntry", "index" / Int16ub, "transmit_power_cdbm" / Int16sb
    ),
    P.FREQUENCY_INFORMATION: _spec("FrequencyInformation", "flags" / _flags("hopping"), children=True),
    P.FREQUENCY_HOP_TABLE: _spec(
        "FrequencyHopTable", "hop_table_id" / Int8ub, Padding(1), "frequencies_khz" / _U32V
    ),
    P.FIXED_FREQUENCY_TABLE: _spec("FixedFrequencyTable", "frequencies_khz" / _U32V),
    P.PER_ANTENNA_RECEIVE_SENSITIVITY_RANGE: _spec(
        "PerAntennaReceiveSensitivityRange", "antenna" / Int16ub, "min_index" / Int16ub, "max_index" / Int16ub
    ),
    P.ROSPEC: _spec(
        "ROSpec", "rospec_id" / Int32ub, "priority" / Int8ub, "current_state" / Int8ub, children=True
    ),
    P.RO_BOUNDARY_SPEC: _spec("ROBoundarySpec", children=True),
    P.ROSPEC_START_TRIGGER: _spec("ROSpecStartTrigger", "trigger" / Int8ub, children=True),
    P.PERIODIC_TRIGGER_VALUE: _spec(
        "PeriodicTriggerValue", "offset_ms" / Int32ub, "period_ms" / Int32ub, children=True
    ),
    P.GPI_TRIGGER_VALUE: _spec(
        "GPITriggerValue", "gpi_port" / Int16ub, "flags" / _flags("gpi_event"), "timeout_ms" / Int32ub
    ),
    P.ROSPEC_STOP_TRIGGER: _spec(
        "ROSpecStopTrigger", "trigger" / Int8ub, "duration_ms" / Int32ub, children=True
    ),
    P.AISPEC: _spec("AISpec", "antennas" / _U16V, children=True),
    P.AISPEC_STOP_TRIGGER: _spec(
        "AISpecStopTrigger", "trigger" / Int8ub, "duration_ms" / Int32ub, children=True
    ),
    P.TAG_OBSERVATION_TRIGGER: _spec(
        "TagObservationTrigger",
        "trigger" / Int8ub,
        Padding(1),
        "number_of_tags" / Int16ub,
        "number_of_attempts" / Int16ub,
        "t_ms" / Int16ub,
        "timeout_ms" / Int32ub,
    ),
    P.INVENTORY_PARAMETER_SPEC: _spec(
        "InventoryParameterSpec", "spec_id" / Int16ub, "protocol_id" / Int8ub, children=True
    ),
    P.RF_SURVEY_SPEC: _spec(
        "RFSurveySpec",
        "antenna" / Int16ub,
        "start_frequency_khz" / Int32ub,
        "end_frequency_khz" / Int32ub,
        children=True,
    ),
    P.RF_SURVEY_SPEC_STOP_TRIGGER: _spec(
        "RFSurveySpecStopTrigger", "trigger" / Int8ub, "duration_ms" / Int32ub, "n" / Int32ub
    ),
    P.ACCESS_SPEC: _spec(
        "AccessSpec",
        "access_spec_id" / Int32ub,
        "antenna" / Int16ub,
        "protocol_id" / Int8ub,
        "flags" / _flags("current_state"),
        "rospec_id" / Int32ub,
        children=True,
    ),
    P.ACCESS_SPEC_STOP_TRIGGER: _spec(
        "AccessSpecStopTrigger", "trigger" / Int8ub, "operation_count" / Int16ub
    ),
    P.ACCESS_COMMAND: _spec("AccessCommand", children=True),
    P.CLIENT_REQUEST_OPSPEC: _spec("ClientRequestOpSpec", "opspec_id" / Int16ub),
    P.CLIENT_REQUEST_RESPONSE: _TlvSpec("ClientRequestResponse", opaque=True),
    P.LLRP_CONFIGURATION_STATE_VALUE: _spec("LLRPConfigurationStateValue", "state" / Int32ub),
    P.IDENTIFICATION: _spec("Identification", "id_type" / Int8ub, "reader_id" / _BYTES),
    P.GPO_WRITE_DATA: _spec("GPOWriteData", "gpo_port" / Int16ub, "flags" / _flags("data")),
    P.KEEPALIVE_SPEC: _spec("KeepaliveSpec", "trigger" / Int8ub, "period_ms" / Int32ub),
    P.ANTENNA_PROPERTIES: _spec(
        "AntennaProperties", "flags" / _flags("connected"), "antenna" / Int16ub, "gain_cdbi" / Int16sb
    ),
    P.ANTENNA_CONFIGURATION: _spec("AntennaConfiguration", "antenna" / Int16ub, children=True),
    P.RF_RECEIVER: _spec("RFReceiver", "receive_sensitivity_index" / Int16ub),
    P.RF_TRANSMITTER: _spec(
        "RFTransmitter", "hop_table_id" / Int16ub, "channel_index" / Int16ub, "transmit_power_index" / Int16ub
    ),
    P.GPI_PORT_CURRENT_STATE: _spec(
        "GPIPortCurrentState", "gpi_port" / Int16ub, "flags" / _flags("enabled"), "state" / Int8ub
    ),
    P.EVENTS_AND_REPORTS: _spec(
        "EventsAndReports", "flags" / _flags("hold_events_and_reports_upon_reconnect")
    ),
    P.RO_REPORT_SPEC: _spec("ROReportSpec", "trigger" / Int8ub, "n" / Int16ub, children=True),
    P.TAG_REPORT_CONTENT_SELECTOR: _spec(
        "TagReportContentSelector",
        "flags"
        / _flags(
            "rospec_id",
            "spec_index",
            "inventory_parameter_spec_id",
            "antenna_id",
            "channel_index",
            "peak_rssi",
            "first_seen_timestamp",
            "last_seen_timestamp",
            "tag_seen_count",
            "access_spec_id",
        ),
        children=True,
    ),
    P.ACCESS_REPORT_SPEC: _spec("AccessReportSpec", "trigger" / Int8ub),
    P.TAG_REPORT_DATA: _spec("TagReportData", children=True),
    P.EPC_DATA: _spec("EPCData", "epc" / _BITS_ARRAY),
    P.RF_SURVEY_REPORT_DATA: _spec("RFSurveyReportData", children=True),
    P.FREQUENCY_RSSI_LEVEL_ENTRY: _spec(
        "FrequencyRSSILevelEntry",
        "frequency_khz" / Int32ub,
        "bandwidth_khz" / Int32ub,
        "average_rssi" / Int8sb,
        "peak_rssi" / Int8sb,
        children=True,
    ),
    P.READER_EVENT_NOTIFICATION_SPEC: _spec("ReaderEventNotificationSpec", children=True),
    P.EVENT_NOTIFICATION_STATE: _spec(
        "EventNotificationState", "event_type" / Int16ub, "flags" / _flags("enabled")
    ),
    P.READER_EVENT_NOTIFICATION_DATA: _spec("ReaderEventNotificationData", children=True),
    P.HOPPING_EVENT: _spec("HoppingEvent", "hop_table_id" / Int16ub, "next_channel_index" / Int16ub),
    P.GPI_EVENT: _spec("GPIEvent", "gpi_port" / Int16ub, "flags" / _flags("gpi_event")),
    P.ROSPEC_EVENT: _spec(
        "ROSpecEvent", "event_type" / Int8ub, "rospec_id" / Int32ub, "preempting_rospec_id" / Int32ub
    ),
    P.REPORT_BUFFER_LEVEL_WARNING_EVENT: _spec("ReportBufferLevelWarningEvent", "percent_full" / Int8ub),
    P.REPORT_BUFFER_OVERFLOW_ERROR_EVENT: _spec("ReportBufferOverflowErrorEvent"),
    P.READER_EXCEPTION_EVENT: _spec("ReaderExceptionEvent", "message" / _UTF8, children=True),
    P.RF_SURVEY_EVENT: _spec(
        "RFSurveyEvent", "event_type" / Int8ub, "rospec_id" / Int32ub, "spec_index" / Int16ub
    ),
    P.AISPEC_EVENT: _spec(
        "AISpecEvent", "event_type" / Int8ub, "rospec_id" / Int32ub, "spec_index" / Int16ub, children=True
    ),
    P.ANTENNA_EVENT: _spec("AntennaEvent", "event_type" / Int8ub, "antenna" / Int16ub),
    P.CONNECTION_ATTEMPT_EVENT: _spec("ConnectionAttemptEvent", "status" / Int16ub),
    P.CONNECTION_CLOSE_EVENT: _spec("ConnectionCloseEvent"),
    P.LLRP_STATUS: _spec("LLRPStatus", "status_code" / Int16ub, "description" / _UTF8, children=True),
    P.FIELD_ERROR: _spec("FieldError", "field_num" / Int16ub, "error_code" / Int16ub),
    P.PARAMETER_ERROR: _spec(
        "ParameterError", "parameter_type" / Int16ub, "error_code" / Int16ub, children=True
    ),
    P.C1G2_LLRP_CAPABILITIES: _spec(
        "C1G2LLRPCapabilities",
        "flags"
        / _flags(
            "supports_block_erase",
            "supports_block_write",
            "supports_block_permalock",
            "supports_tag_recommissioning",
            "supports_umi_method_2",
            "supports_xpc",
        ),
        "max_select_filters_per_query" / Int16ub,
    ),
    P.C1G2_UHF_RF_MODE_TABLE: _spec("C1G2UHFRFModeTable", children=True),
    P.C1G2_UHF_RF_MODE_TABLE_ENTRY: _spec(
        "C1G2UHFRFModeTableEntry",
        "mode_id" / Int32ub,
        "flags" / _flags("divide_ratio_64_3", "epc_hag_conformant"),
        "modulation" / Int8ub,
        "forward_link_modulation" / Int8ub,
        "spectral_mask" / Int8ub,
        "backscatter_data_rate" / Int32ub,
        "pie_ratio" / Int32ub,
        "min_tari_ns" / Int32ub,
        "max_tari_ns" / Int32ub,
        "step_tari_ns" / Int32ub,
    ),
    P.C1G2_INVENTORY_COMMAND: _spec(
        "C1G2InventoryCommand", "flags" / _flags("tag_inventory_state_aware"), children=True
    ),
    P.C1G2_FILTER: _spec(
        "C1G2Filter", "flags" / BitStruct("truncate" / BitsInteger(2), Padding(6)), children=True
    ),
    P.C1G2_TAG_INVENTORY_MASK: _spec(
        "C1G2TagInventoryMask",
        "flags" / BitStruct("memory_bank" / BitsInteger(2), Padding(6)),
        "pointer" / Int16ub,
        "mask" / _BITS_ARRAY,
    ),
    P.C1G2_TAG_INVENTORY_STATE_AWARE_FILTER_ACTION: _spec(
        "C1G2TagInventoryStateAwareFilterAction", "target" / Int8ub, "action" / Int8ub
    ),
    P.C1G2_TAG_INVENTORY_STATE_UNAWARE_FILTER_ACTION: _spec(
        "C1G2TagInventoryStateUnawareFilterAction", "action" / Int8ub
    ),
    P.C1G2_RF_CONTROL: _spec("C1G2RFControl", "mode_index" / Int16ub, "tari_ns" / Int16ub),
    P.C1G2_SINGULATION_CONTROL: _spec(
        "C1G2SingulationControl",
        "flags" / BitStruct("session" / BitsInteger(2), Padding(6)),
        "tag_population" / Int16ub,
        "tag_transit_time_ms" / Int32ub,
        children=True,
    ),
    P.C1G2_TAG_INVENTORY_STATE_AWARE_SINGULATION_ACTION: _spec(
        "C1G2TagInventoryStateAwareSingulationAction",
        "flags" / _flags("inventoried_state_b", "sl_deasserted"),
    ),
    P.C1G2_TAG_SPEC: _spec("C1G2TagSpec", children=True),
    P.C1G2_TARGET_TAG: _spec(
        "C1G2TargetTag",
        "flags" / BitStruct("memory_bank" / BitsInteger(2), "match" / Flag, Padding(5)),
        "pointer" / Int16ub,
        "mask" / _BITS_ARRAY,
        "data" / _BITS_ARRAY,
    ),
    P.C1G2_READ: _spec(
        "C1G2Read",
        "opspec_id" / Int16ub,
        "access_password" / Int32ub,
        "flags" / _MEMORY_BANK,
        "word_pointer" / Int16ub,
        "word_count" / Int16ub,
    ),
    P.C1G2_WRITE: _spec(
        "C1G2Write",
        "opspec_id" / Int16ub,
        "access_password" / Int32ub,
        "flags" / _MEMORY_BANK,
        "word_pointer" / Int16ub,
        "data" / _U16V,
    ),
    P.C1G2_KILL: _spec("C1G2Kill", "opspec_id" / Int16ub, "kill_password" / Int32ub),
    P.C1G2_LOCK: _spec("C1G2Lock", "opspec_id" / Int16ub, "access_password" / Int32ub, children=True),
    P.C1G2_LOCK_PAYLOAD: _spec("C1G2LockPayload", "privilege" / Int8ub, "data_field" / Int8ub),
    P.C1G2_BLOCK_ERASE: _spec(
        "C1G2BlockErase",
        "opspec_id" / Int16ub,
        "access_password" / Int32ub,
        "flags" / _MEMORY_BANK,
        "word_pointer" / Int16ub,
        "word_count" / Int16ub,
    ),
    P.C1G2_BLOCK_WRITE: _spec(
        "C1G2BlockWrite",
        "opspec_id" / Int16ub,
        "access_password" / Int32ub,
        "flags" / _MEMORY_BANK,
        "word_pointer" / Int16ub,
        "data" / _U16V,
    ),
    P.C1G2_EPC_MEMORY_SELECTOR: _spec(
        "C1G2EPCMemorySelector", "flags" / _flags("crc_enabled", "pc_bits_enabled", "xpc_bits_enabled")
    ),
    P.C1G2_READ_OPSPEC_RESULT: _TlvSpec("C1G2ReadOpSpecResult", opaque=True),
    P.C1G2_WRITE_OPSPEC_RESULT: _TlvSpec("C1G2WriteOpSpecResult", opaque=True),
    P.C1G2_KILL_OPSPEC_RESULT: _TlvSpec("C1G2KillOpSpecResult", opaque=True),
    P.C1G2_LOCK_OPSPEC_RESULT: _TlvSpec("C1G2LockOpSpecResult", opaque=True),
    P.C1G2_BLOCK_ERASE_OPSPEC_RESULT: _TlvSpec("C1G2BlockEraseOpSpecResult", opaque=True),
    P.C1G2_BLOCK_WRITE_OPSPEC_RESULT: _TlvSpec("C1G2BlockWriteOpSpecResult", opaque=True),
    P.LOOP_SPEC: _spec("LoopSpec", "loop_count" / Int32ub),
    P.SPEC_LOOP_EVENT: _spec("SpecLoopEvent", "rospec_id" / Int32ub, "loop_count" / Int32ub),
    P.C1G2_RECOMMISSION: _TlvSpec("C1G2Recommission", opaque=True),
    P.C1G2_BLOCK_PERMALOCK: _TlvSpec("C1G2BlockPermalock", opaque=True),
    P.C1G2_GET_BLOCK_PERMALOCK_STATUS: _TlvSpec("C1G2GetBlockPermalockStatus", opaque=True),
    P.C1G2_RECOMMISSION_OPSPEC_RESULT: _TlvSpec("C1G2RecommissionOpSpecResult", opaque=True),
    P.C1G2_BLOCK_PERMALOCK_OPSPEC_RESULT: _TlvSpec("C1G2BlockPermalockOpSpecResult", opaque=True),
    P.C1G2_GET_BLOCK_PERMALOCK_STATUS_OPSPEC_RESULT: _TlvSpec(
        "C1G2GetBlockPermalockStatusOpSpecResult", opaque=True
    ),
    P.MAXIMUM_RECEIVE_SENSITIVITY: _spec("MaximumReceiveSensitivity", "sensitivity_dbm" / Int16sb),
    P.RF_SURVEY_FREQUENCY_CAPABILITIES: _spec(
        "RFSurveyFrequencyCapabilities", "min_frequency_khz" / Int32ub, "max_frequency_khz" / Int32ub
    ),
    P.CUSTOM: _spec("Custom", "vendor" / Int32ub, "subtype" / Int32ub, "data" / GreedyBytes),
}
"""Each TLV parameter type's fields (construct) and whether sub-parameters follow them."""
del P

_TV_NAMES: Final = {
    1: "AntennaID",
    2: "FirstSeenTimestampUTC",
    3: "FirstSeenTimestampUptime",
    4: "LastSeenTimestampUTC",
    5: "LastSeenTimestampUptime",
    6: "PeakRSSI",
    7: "ChannelIndex",
    8: "TagSeenCount",
    9: "ROSpecID",
    10: "InventoryParameterSpecID",
    11: "C1G2_CRC",
    12: "C1G2_PC",
    13: "EPC-96",
    14: "SpecIndex",
    15: "ClientRequestOpSpecResult",
    16: "AccessSpecID",
    17: "OpSpecID",
    18: "C1G2SingulationDetails",
    19: "C1G2_XPC_W1",
    20: "C1G2_XPC_W2",
}
TLV_HEADER = Struct("word" / Int16ub, "length" / Int16ub)
"""A TLV parameter's header: 6 reserved bits and the 10-bit type, then the length including this header."""
_TLV_LAYOUTS: Final = {
    ptype: (
        Struct("fields" / spec.fields, "rest" / GreedyBytes)
        if spec.children
        else Struct("fields" / spec.fields, Terminated)
    )
    for ptype, spec in TLV_SPECS.items()
    if spec.fields is not None
}


def parameter_name(ptype: int) -> str:
    """The standard's name of a parameter type (``Unknown(n)`` for one this codec does not know)."""
    if ptype in _TV_NAMES:
        return _TV_NAMES[ptype]
    spec = TLV_SPECS.get(ptype)
    return spec.name if spec is not None else f"Unknown({ptype})"


@dataclass(frozen=True, slots=True)
class Parameter:
    """A decoded parameter of any type: the generic form, used where no typed class is worth having.

    ``fields`` holds the fields by the names of the type's construct definition in :data:`TLV_SPECS` (flag
    bytes nest as ``fields["flags"]``); a TV parameter has ``{"value": ...}``; a Custom parameter
    ``{"vendor", "subtype", "data"}``; a type this codec does not model (unknown, or opaque) ``{"data":
    body}``. ``params`` holds the sub-parameters in wire order.
    """

    type: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    params: tuple[Parameter, ...] = ()

    @property
    def name(self) -> str:
        return parameter_name(self.type)

    def find(self, ptype: int) -> Parameter | None:
        """The first sub-parameter of type ``ptype``."""
        return next((p for p in self.params if p.type == ptype), None)

    def find_all(self, ptype: int) -> list[Parameter]:
        return [p for p in self.params if p.type == ptype]


def _plain(obj: Any) -> Any:
    """A construct result as plain dicts and lists (without construct's private ``_io`` entries)."""
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items() if not key.startswith("_")}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    return obj


def _split(data: bytes, where: str) -> list[tuple[int, bool, Any]]:
    """The parameters laid end to end in ``data``: (type, is TV, TV value or TLV body), each read through
    its construct definition. DecodeError names the first that does not fit."""
    out: list[tuple[int, bool, Any]] = []
    pos = 0
    size = len(data)
    while pos < size:
        lead = data[pos]
        if lead & 0x80:
            ptype = lead & 0x7F
            value_construct = TV_VALUES.get(ptype)
            if value_construct is None:
                raise DecodeError(
                    f"{where}: unknown TV parameter type {ptype} at byte {pos}: its size is unknown"
                )
            end = pos + 1 + _TV_SIZE[ptype]
            if end > size:
                raise DecodeError(f"{where}: {parameter_name(ptype)} truncated at byte {pos}")
            out.append((ptype, True, _plain(value_construct.parse(data[pos + 1 : end]))))
        else:
            if size - pos < 4:
                raise DecodeError(f"{where}: {size - pos} bytes left at byte {pos}, a TLV header has 4")
            header = TLV_HEADER.parse(data[pos : pos + 4])
            ptype = header.word & 0x3FF
            if header.length < 4:
                raise DecodeError(
                    f"{where}: {parameter_name(ptype)} at byte {pos} gives length {header.length}, at least 4"
                )
            end = pos + header.length
            if end > size:
                raise DecodeError(
                    f"{where}: {parameter_name(ptype)} at byte {pos} gives length {header.length}, "
                    f"only {size - pos} bytes left"
                )
            out.append((ptype, False, bytes(data[pos + 4 : end])))
        pos = end
    return out


def _tlv(ptype: int, body: bytes) -> Parameter:
    spec = TLV_SPECS.get(ptype)
    if spec is None or spec.opaque:
        return Parameter(ptype, {"data": body})
    if spec.fields is None:
        if spec.children:
            return Parameter(ptype, {}, decode_parameters(body, spec.name))
        if body:
            raise DecodeError(f"{spec.name} has no fields, {len(body)} bytes given")
        return Parameter(ptype)
    try:
        parsed = _TLV_LAYOUTS[ptype].parse(body)
    except ConstructError as err:
        raise DecodeError(f"{spec.name}: fields do not fit its {len(body)} bytes") from err
    fields = _plain(parsed.fields)
    if not spec.children:
        return Parameter(ptype, fields)
    return Parameter(ptype, fields, decode_parameters(bytes(parsed.rest), spec.name))


def decode_parameters(data: bytes, where: str = "parameters") -> tuple[Parameter, ...]:
    """Every parameter in ``data``, with its sub-parameters, through the construct definitions.

    Unknown TLV types (vendor Custom parameters among them) are kept as raw parameters, never an error.
    """
    return tuple(
        Parameter(ptype, {"value": value}) if tv else _tlv(ptype, value)
        for ptype, tv, value in _split(data, where)
    )


def _wrap_build(what: str, build: Any, value: Any) -> bytes:
    try:
        return bytes(build(value))
    except (ConstructError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
        raise EncodeError(f"cannot encode {what}: {err}") from err


def _tlv_bytes(ptype: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF - 4:
        raise EncodeError(f"{parameter_name(ptype)}: {len(body)} bytes do not fit a TLV")
    return ptype.to_bytes(2, "big") + (len(body) + 4).to_bytes(2, "big") + body


def encode_parameter(parameter: Parameter) -> bytes:
    """The bytes of ``parameter`` (with its sub-parameters), through the same definitions as the decoder.

    A parameter of a TV type (1..127) with a ``value`` is TV; anything else is TLV, raw when it carries
    ``data`` and its type is not modelled.
    """
    ptype = parameter.type
    fields = parameter.fields
    if not 0 < ptype <= 0x3FF:
        raise EncodeError(f"parameter type {ptype} out of range 1..1023")
    if ptype in TV_VALUES and "value" in fields:
        return bytes((0x80 | ptype,)) + _wrap_build(parameter.name, TV_VALUES[ptype].build, fields["value"])
    spec = TLV_SPECS.get(ptype)
    if spec is None or spec.opaque:
        if parameter.params:
            raise EncodeError(f"{parameter.name}: a raw parameter has no sub-parameters")
        return _tlv_bytes(ptype, bytes(fields.get("data", b"")))
    body = b"" if spec.fields is None else _wrap_build(spec.name, spec.fields.build, fields)
    if parameter.params and not spec.children:
        raise EncodeError(f"{spec.name} has no sub-parameters")
    return _tlv_bytes(ptype, body + b"".join(encode_parameter(p) for p in parameter.params))


def _custom(vendor: int, subtype: int, data: bytes) -> Parameter:
    return Parameter(CUSTOM, {"vendor": vendor, "subtype": subtype, "data": data})
