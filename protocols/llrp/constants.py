"""LLRP's numbers: message and parameter types, status codes and the enumerations the codec and its
users name (from the EPCglobal LLRP 1.0.1 and 1.1 standards)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Final

HEADER_SIZE: Final = 10
SUPPORTED_VERSIONS: Final = (1, 2)
"""LLRP 1.0.1 (1) and 1.1 (2): every message this codec knows exists in both."""
DEFAULT_MAX_MESSAGE: Final = 1 << 20
"""A message longer than this (1 MiB; a report of 10,000 tags is some 400 KB) is taken for a lying length."""
CUSTOM: Final = 1023
"""The parameter (and message) type of vendor extensions."""
EPC96_BITS: Final = 96


class MessageType(IntEnum):
    """Message types (the header's 10-bit type)."""

    GET_READER_CAPABILITIES = 1
    GET_READER_CONFIG = 2
    SET_READER_CONFIG = 3
    CLOSE_CONNECTION_RESPONSE = 4
    GET_READER_CAPABILITIES_RESPONSE = 11
    GET_READER_CONFIG_RESPONSE = 12
    SET_READER_CONFIG_RESPONSE = 13
    CLOSE_CONNECTION = 14
    ADD_ROSPEC = 20
    DELETE_ROSPEC = 21
    START_ROSPEC = 22
    STOP_ROSPEC = 23
    ENABLE_ROSPEC = 24
    DISABLE_ROSPEC = 25
    GET_ROSPECS = 26
    ADD_ROSPEC_RESPONSE = 30
    DELETE_ROSPEC_RESPONSE = 31
    START_ROSPEC_RESPONSE = 32
    STOP_ROSPEC_RESPONSE = 33
    ENABLE_ROSPEC_RESPONSE = 34
    DISABLE_ROSPEC_RESPONSE = 35
    GET_ROSPECS_RESPONSE = 36
    ADD_ACCESSSPEC = 40
    DELETE_ACCESSSPEC = 41
    ENABLE_ACCESSSPEC = 42
    DISABLE_ACCESSSPEC = 43
    GET_ACCESSSPECS = 44
    CLIENT_REQUEST_OP = 45
    GET_SUPPORTED_VERSION = 46
    SET_PROTOCOL_VERSION = 47
    ADD_ACCESSSPEC_RESPONSE = 50
    DELETE_ACCESSSPEC_RESPONSE = 51
    ENABLE_ACCESSSPEC_RESPONSE = 52
    DISABLE_ACCESSSPEC_RESPONSE = 53
    GET_ACCESSSPECS_RESPONSE = 54
    CLIENT_REQUEST_OP_RESPONSE = 55
    GET_SUPPORTED_VERSION_RESPONSE = 56
    SET_PROTOCOL_VERSION_RESPONSE = 57
    GET_REPORT = 60
    RO_ACCESS_REPORT = 61
    KEEPALIVE = 62
    READER_EVENT_NOTIFICATION = 63
    ENABLE_EVENTS_AND_REPORTS = 64
    KEEPALIVE_ACK = 72
    ERROR_MESSAGE = 100
    CUSTOM_MESSAGE = 1023


_RESPONSES: Final[Mapping[int, int]] = {
    MessageType.GET_READER_CAPABILITIES: MessageType.GET_READER_CAPABILITIES_RESPONSE,
    MessageType.GET_READER_CONFIG: MessageType.GET_READER_CONFIG_RESPONSE,
    MessageType.SET_READER_CONFIG: MessageType.SET_READER_CONFIG_RESPONSE,
    MessageType.CLOSE_CONNECTION: MessageType.CLOSE_CONNECTION_RESPONSE,
    MessageType.ADD_ROSPEC: MessageType.ADD_ROSPEC_RESPONSE,
    MessageType.DELETE_ROSPEC: MessageType.DELETE_ROSPEC_RESPONSE,
    MessageType.START_ROSPEC: MessageType.START_ROSPEC_RESPONSE,
    MessageType.STOP_ROSPEC: MessageType.STOP_ROSPEC_RESPONSE,
    MessageType.ENABLE_ROSPEC: MessageType.ENABLE_ROSPEC_RESPONSE,
    MessageType.DISABLE_ROSPEC: MessageType.DISABLE_ROSPEC_RESPONSE,
    MessageType.GET_ROSPECS: MessageType.GET_ROSPECS_RESPONSE,
    MessageType.ADD_ACCESSSPEC: MessageType.ADD_ACCESSSPEC_RESPONSE,
    MessageType.DELETE_ACCESSSPEC: MessageType.DELETE_ACCESSSPEC_RESPONSE,
    MessageType.ENABLE_ACCESSSPEC: MessageType.ENABLE_ACCESSSPEC_RESPONSE,
    MessageType.DISABLE_ACCESSSPEC: MessageType.DISABLE_ACCESSSPEC_RESPONSE,
    MessageType.GET_ACCESSSPECS: MessageType.GET_ACCESSSPECS_RESPONSE,
    MessageType.CLIENT_REQUEST_OP: MessageType.CLIENT_REQUEST_OP_RESPONSE,
    MessageType.GET_SUPPORTED_VERSION: MessageType.GET_SUPPORTED_VERSION_RESPONSE,
    MessageType.SET_PROTOCOL_VERSION: MessageType.SET_PROTOCOL_VERSION_RESPONSE,
}
_STATUS_RESPONSES: Final = frozenset(_RESPONSES.values()) - {
    MessageType.GET_SUPPORTED_VERSION_RESPONSE,
    MessageType.CLIENT_REQUEST_OP_RESPONSE,
}
"""Responses whose first parameter is an LLRPStatus (decoded as :class:`Response`)."""


def response_type(request_type: int) -> int | None:
    """The message type that answers ``request_type`` (None: no response, e.g. KEEPALIVE_ACK)."""
    return _RESPONSES.get(request_type)


class ParamType(IntEnum):
    """Parameter types: 1..127 are TV, 128..1023 TLV."""

    ANTENNA_ID = 1
    FIRST_SEEN_TIMESTAMP_UTC = 2
    FIRST_SEEN_TIMESTAMP_UPTIME = 3
    LAST_SEEN_TIMESTAMP_UTC = 4
    LAST_SEEN_TIMESTAMP_UPTIME = 5
    PEAK_RSSI = 6
    CHANNEL_INDEX = 7
    TAG_SEEN_COUNT = 8
    ROSPEC_ID = 9
    INVENTORY_PARAMETER_SPEC_ID = 10
    C1G2_CRC = 11
    C1G2_PC = 12
    EPC_96 = 13
    SPEC_INDEX = 14
    CLIENT_REQUEST_OPSPEC_RESULT = 15
    ACCESS_SPEC_ID = 16
    OPSPEC_ID = 17
    C1G2_SINGULATION_DETAILS = 18
    C1G2_XPC_W1 = 19
    C1G2_XPC_W2 = 20
    UTC_TIMESTAMP = 128
    UPTIME = 129
    GENERAL_DEVICE_CAPABILITIES = 137
    RECEIVE_SENSITIVITY_TABLE_ENTRY = 139
    PER_ANTENNA_AIR_PROTOCOL = 140
    GPIO_CAPABILITIES = 141
    LLRP_CAPABILITIES = 142
    REGULATORY_CAPABILITIES = 143
    UHF_BAND_CAPABILITIES = 144
    TRANSMIT_POWER_LEVEL_TABLE_ENTRY = 145
    FREQUENCY_INFORMATION = 146
    FREQUENCY_HOP_TABLE = 147
    FIXED_FREQUENCY_TABLE = 148
    PER_ANTENNA_RECEIVE_SENSITIVITY_RANGE = 149
    ROSPEC = 177
    RO_BOUNDARY_SPEC = 178
    ROSPEC_START_TRIGGER = 179
    PERIODIC_TRIGGER_VALUE = 180
    GPI_TRIGGER_VALUE = 181
    ROSPEC_STOP_TRIGGER = 182
    AISPEC = 183
    AISPEC_STOP_TRIGGER = 184
    TAG_OBSERVATION_TRIGGER = 185
    INVENTORY_PARAMETER_SPEC = 186
    RF_SURVEY_SPEC = 187
    RF_SURVEY_SPEC_STOP_TRIGGER = 188
    ACCESS_SPEC = 207
    ACCESS_SPEC_STOP_TRIGGER = 208
    ACCESS_COMMAND = 209
    CLIENT_REQUEST_OPSPEC = 210
    CLIENT_REQUEST_RESPONSE = 211
    LLRP_CONFIGURATION_STATE_VALUE = 217
    IDENTIFICATION = 218
    GPO_WRITE_DATA = 219
    KEEPALIVE_SPEC = 220
    ANTENNA_PROPERTIES = 221
    ANTENNA_CONFIGURATION = 222
    RF_RECEIVER = 223
    RF_TRANSMITTER = 224
    GPI_PORT_CURRENT_STATE = 225
    EVENTS_AND_REPORTS = 226
    RO_REPORT_SPEC = 237
    TAG_REPORT_CONTENT_SELECTOR = 238
    ACCESS_REPORT_SPEC = 239
    TAG_REPORT_DATA = 240
    EPC_DATA = 241
    RF_SURVEY_REPORT_DATA = 242
    FREQUENCY_RSSI_LEVEL_ENTRY = 243
    READER_EVENT_NOTIFICATION_SPEC = 244
    EVENT_NOTIFICATION_STATE = 245
    READER_EVENT_NOTIFICATION_DATA = 246
    HOPPING_EVENT = 247
    GPI_EVENT = 248
    ROSPEC_EVENT = 249
    REPORT_BUFFER_LEVEL_WARNING_EVENT = 250
    REPORT_BUFFER_OVERFLOW_ERROR_EVENT = 251
    READER_EXCEPTION_EVENT = 252
    RF_SURVEY_EVENT = 253
    AISPEC_EVENT = 254
    ANTENNA_EVENT = 255
    CONNECTION_ATTEMPT_EVENT = 256
    CONNECTION_CLOSE_EVENT = 257
    LLRP_STATUS = 287
    FIELD_ERROR = 288
    PARAMETER_ERROR = 289
    C1G2_LLRP_CAPABILITIES = 327
    C1G2_UHF_RF_MODE_TABLE = 328
    C1G2_UHF_RF_MODE_TABLE_ENTRY = 329
    C1G2_INVENTORY_COMMAND = 330
    C1G2_FILTER = 331
    C1G2_TAG_INVENTORY_MASK = 332
    C1G2_TAG_INVENTORY_STATE_AWARE_FILTER_ACTION = 333
    C1G2_TAG_INVENTORY_STATE_UNAWARE_FILTER_ACTION = 334
    C1G2_RF_CONTROL = 335
    C1G2_SINGULATION_CONTROL = 336
    C1G2_TAG_INVENTORY_STATE_AWARE_SINGULATION_ACTION = 337
    C1G2_TAG_SPEC = 338
    C1G2_TARGET_TAG = 339
    C1G2_READ = 341
    C1G2_WRITE = 342
    C1G2_KILL = 343
    C1G2_LOCK = 344
    C1G2_LOCK_PAYLOAD = 345
    C1G2_BLOCK_ERASE = 346
    C1G2_BLOCK_WRITE = 347
    C1G2_EPC_MEMORY_SELECTOR = 348
    C1G2_READ_OPSPEC_RESULT = 349
    C1G2_WRITE_OPSPEC_RESULT = 350
    C1G2_KILL_OPSPEC_RESULT = 351
    C1G2_LOCK_OPSPEC_RESULT = 352
    C1G2_BLOCK_ERASE_OPSPEC_RESULT = 353
    C1G2_BLOCK_WRITE_OPSPEC_RESULT = 354
    LOOP_SPEC = 355
    SPEC_LOOP_EVENT = 356
    C1G2_RECOMMISSION = 357
    C1G2_BLOCK_PERMALOCK = 358
    C1G2_GET_BLOCK_PERMALOCK_STATUS = 359
    C1G2_RECOMMISSION_OPSPEC_RESULT = 360
    C1G2_BLOCK_PERMALOCK_OPSPEC_RESULT = 361
    C1G2_GET_BLOCK_PERMALOCK_STATUS_OPSPEC_RESULT = 362
    MAXIMUM_RECEIVE_SENSITIVITY = 363
    RF_SURVEY_FREQUENCY_CAPABILITIES = 365
    CUSTOM = 1023


class StatusCode(IntEnum):
    """LLRPStatus codes: M_ about a message, P_ a parameter, A_ a field, R_ the reader."""

    M_SUCCESS = 0
    M_PARAMETER_ERROR = 100
    M_FIELD_ERROR = 101
    M_UNEXPECTED_PARAMETER = 102
    M_MISSING_PARAMETER = 103
    M_DUPLICATE_PARAMETER = 104
    M_OVERFLOW_PARAMETER = 105
    M_OVERFLOW_FIELD = 106
    M_UNKNOWN_PARAMETER = 107
    M_UNKNOWN_FIELD = 108
    M_UNSUPPORTED_MESSAGE = 109
    M_UNSUPPORTED_VERSION = 110
    M_UNSUPPORTED_PARAMETER = 111
    M_UNEXPECTED_MESSAGE = 112
    P_PARAMETER_ERROR = 200
    P_FIELD_ERROR = 201
    P_UNEXPECTED_PARAMETER = 202
    P_MISSING_PARAMETER = 203
    P_DUPLICATE_PARAMETER = 204
    P_OVERFLOW_PARAMETER = 205
    P_OVERFLOW_FIELD = 206
    P_UNKNOWN_PARAMETER = 207
    P_UNKNOWN_FIELD = 208
    P_UNSUPPORTED_PARAMETER = 209
    A_INVALID = 300
    A_OUT_OF_RANGE = 301
    R_DEVICE_ERROR = 401


class ConnectionAttemptStatus(IntEnum):
    """ConnectionAttemptEvent status: only SUCCESS lets the client in."""

    SUCCESS = 0
    READER_INITIATED_CONNECTION_EXISTS = 1
    CLIENT_INITIATED_CONNECTION_EXISTS = 2
    FAILED_OTHER_REASON = 3
    ANOTHER_CONNECTION_ATTEMPTED = 4


_CONNECTION_ATTEMPT_TEXT: Final = {
    0: "success",
    1: "failed: a reader-initiated connection already exists",
    2: "failed: a client-initiated connection already exists",
    3: "failed for a reason other than an existing connection",
    4: "another connection was attempted",
}


class ReaderEventType(IntEnum):
    """EventNotificationState types: which READER_EVENT_NOTIFICATIONs the client asks for."""

    HOPPING = 0
    GPI = 1
    ROSPEC = 2
    REPORT_BUFFER_FILL_WARNING = 3
    READER_EXCEPTION = 4
    RF_SURVEY = 5
    AISPEC = 6
    AISPEC_WITH_SINGULATION = 7
    ANTENNA = 8
    SPEC_LOOP = 9


class ReportTrigger(IntEnum):
    """ROReportSpec triggers (3..6 are LLRP 1.1 only)."""

    NONE = 0
    N_TAGS_OR_END_OF_AISPEC = 1
    N_TAGS_OR_END_OF_ROSPEC = 2
    N_SECONDS_OR_END_OF_AISPEC = 3
    N_SECONDS_OR_END_OF_ROSPEC = 4
    N_MILLISECONDS_OR_END_OF_AISPEC = 5
    N_MILLISECONDS_OR_END_OF_ROSPEC = 6


class RoSpecState(IntEnum):
    DISABLED = 0
    INACTIVE = 1
    ACTIVE = 2


class StartTrigger(IntEnum):
    """ROSpecStartTrigger: NULL waits for START_ROSPEC."""

    NULL = 0
    IMMEDIATE = 1
    PERIODIC = 2
    GPI = 3


class StopTrigger(IntEnum):
    """ROSpecStopTrigger; AISpecStopTrigger adds TAG_OBSERVATION. NULL runs until the enclosing spec ends."""

    NULL = 0
    DURATION = 1
    GPI_WITH_TIMEOUT = 2
    TAG_OBSERVATION = 3


class TagObservationType(IntEnum):
    """TagObservationTrigger types: when an AISpec whose stop trigger is TAG_OBSERVATION ends (3 and 4 are
    LLRP 1.1 only). Each also ends at the trigger's timeout, when it is not 0."""

    N_TAGS_OR_TIMEOUT = 0
    """After N tag observations (every read counts, the same tag again too)."""
    NO_NEW_TAGS_FOR_T_OR_TIMEOUT = 1
    """When no tag observation came for T ms."""
    N_ATTEMPTS_OR_TIMEOUT = 2
    """After N attempts (inventory rounds) to see every tag in the field."""
    N_UNIQUE_TAGS_OR_TIMEOUT = 3
    """After N distinct tags."""
    NO_NEW_UNIQUE_TAGS_FOR_T_OR_TIMEOUT = 4
    """When no tag not seen before in this AISpec came for T ms."""


class RoSpecEventType(IntEnum):
    """ROSpecEvent types."""

    START = 0
    END = 1
    PREEMPTED = 2


AISPEC_EVENT_END: Final = 0
"""AISpecEvent's only event type: the end of an AISpec."""


class AccessSpecStopTriggerType(IntEnum):
    """AccessSpecStopTrigger: NULL keeps the AccessSpec until it is deleted; OPERATION_COUNT deletes it after
    it ran that many times."""

    NULL = 0
    OPERATION_COUNT = 1


class AccessReportTrigger(IntEnum):
    """AccessReportSpec: when the results of an AccessSpec's operations are reported."""

    WITH_RO_REPORT = 0
    """In the RO_ACCESS_REPORT the ROReportSpec sends anyway."""
    END_OF_ACCESS_SPEC = 1
    """In an RO_ACCESS_REPORT of their own, at the end of the AccessSpec."""


AIR_PROTOCOL_C1G2: Final = 1
"""AirProtocolID of EPCglobal Class 1 Gen 2."""
