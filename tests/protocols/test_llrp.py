"""The LLRP codec and framer: messages captured from real readers (tests/vectors/llrp, EdgeX, Apache-2.0),
reference bytes, both directions of every message, the tag fast path against the construct definitions,
unknown vendor parameters, the framer contract (framer_suite.py) and what is particular to this framer (a
header that lies breaks the stream; its limit)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import llrp
from protocols.errors import DecodeError, EncodeError
from protocols.framing import Framer
from protocols.llrp import Parameter, ParamType

from .framer_suite import FramerSuite

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "llrp"
VECTOR_TYPES = {
    "CloseConnectionResponse": llrp.MessageType.CLOSE_CONNECTION_RESPONSE,
    "GetAccessSpecsResponse": llrp.MessageType.GET_ACCESSSPECS_RESPONSE,
    "GetROSpecsResponse": llrp.MessageType.GET_ROSPECS_RESPONSE,
    "GetReaderCapabilitiesResponse": llrp.MessageType.GET_READER_CAPABILITIES_RESPONSE,
    "GetReaderConfigResponse": llrp.MessageType.GET_READER_CONFIG_RESPONSE,
    "ROAccessReport": llrp.MessageType.RO_ACCESS_REPORT,
    "ReaderEventNotification": llrp.MessageType.READER_EVENT_NOTIFICATION,
}
VECTOR_FILES = sorted(VECTORS.glob("*.bytes"))


def vector(path: Path) -> tuple[llrp.Message, dict[str, Any]]:
    mtype = VECTOR_TYPES[path.stem.split("-")[0]]
    message = llrp.parse_message(llrp.Frame(mtype, 7, path.read_bytes()))
    return message, json.loads(path.with_suffix(".json").read_text())


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def one(params: tuple[Parameter, ...] | list[Parameter], ptype: int) -> Parameter:
    found = [p for p in params if p.type == ptype]
    assert len(found) == 1, f"{len(found)} {llrp.parameter_name(ptype)}"
    return found[0]


# ------------------------------------------------------------------------------------------ captured vectors


def test_every_vector_is_here() -> None:
    # All 15 captured messages: the decoder must read every one of them.
    assert len(VECTOR_FILES) == 15
    assert {path.stem.split("-")[0] for path in VECTOR_FILES} == set(VECTOR_TYPES)


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vector_decodes_and_reencodes_to_the_same_bytes(path: Path) -> None:
    message, expected = vector(path)
    assert not isinstance(message, llrp.UnknownMessage)
    if "LLRPStatus" in expected:
        assert isinstance(message, llrp.Response)
        assert message.status.code == expected["LLRPStatus"]["Status"]
        assert message.status.description == expected["LLRPStatus"]["ErrorDescription"]
        assert message.status.field_error is None and message.status.parameter_error is None
        assert message.status.ok
    raw = llrp.encode_message(message, 7)
    assert raw[10:] == path.read_bytes()
    assert llrp.decode_frame(raw) == llrp.Frame(VECTOR_TYPES[path.stem.split("-")[0]], 7, path.read_bytes())


@pytest.mark.parametrize(
    "path", [p for p in VECTOR_FILES if p.stem.startswith("ROAccessReport")], ids=lambda p: p.stem
)
def test_vector_ro_access_reports(path: Path) -> None:
    report, expected = vector(path)
    assert isinstance(report, llrp.RoAccessReport)
    assert report.errors == () and report.extra == ()
    assert len(report.tags) == len(expected["TagReportData"]) == 1
    for tag, want in zip(report.tags, expected["TagReportData"], strict=True):
        assert tag.epc == b64(want["EPC96"]["EPC"])
        assert tag.epc_bits == 96
        assert tag.antenna == want["AntennaID"]
        assert tag.peak_rssi == want["PeakRSSI"]
        assert tag.first_seen_utc == want["FirstSeenUTC"]
        assert tag.channel_index == want["ChannelIndex"]
        assert tag.seen_count == want["TagSeenCount"]
        assert tag.pc == want["C1G2PC"]
        assert tag.crc == want["C1G2CRC"]
        assert tag.last_seen_utc == want["LastSeenUTC"]
        assert tag.first_seen_uptime == want["FirstSeenUptime"]
        assert tag.rospec_id == want["ROSpecID"]
        assert tag.spec_index == want["SpecIndex"]
        assert tag.access_spec_id == want["AccessSpecID"]
        assert tag.extra == ()
        # The spec decoding reads it the same way.
        assert llrp.parse_ro_access_report_spec(path.read_bytes()) == report


def test_vector_reader_event_notification() -> None:
    message, expected = vector(VECTORS / "ReaderEventNotification-000.bytes")
    data = expected["ReaderEventNotificationData"]
    assert message == llrp.ReaderEventNotification((llrp.ConnectionCloseEvent(),), data["UTCTimestamp"])
    assert data["ConnectionCloseEvent"] == {}
    assert all(
        value is None
        for key, value in data.items()
        if key.endswith("Event") and key != "ConnectionCloseEvent"
    )


def test_vector_reader_capabilities() -> None:
    message, expected = vector(VECTORS / "GetReaderCapabilitiesResponse-000.bytes")
    assert isinstance(message, llrp.Response)
    caps = llrp.device_capabilities(message.params)
    want = expected["GeneralDeviceCapabilities"]
    assert caps == llrp.DeviceCapabilities(
        max_antennas=want["MaxSupportedAntennas"],
        manufacturer=want["DeviceManufacturer"],
        model=want["Model"],
        firmware=want["FirmwareVersion"],
        has_utc_clock=want["HasUTCClock"],
        can_set_antenna_properties=want["CanSetAntennaProperties"],
    )
    assert caps.manufacturer == 25882  # Impinj's private enterprise number
    general = one(message.params, ParamType.GENERAL_DEVICE_CAPABILITIES)
    assert [
        {"Index": p.fields["index"], "ReceiveSensitivity": p.fields["receive_sensitivity_db"]}
        for p in general.find_all(ParamType.RECEIVE_SENSITIVITY_TABLE_ENTRY)
    ] == want["ReceiveSensitivities"]
    gpio = one(general.params, ParamType.GPIO_CAPABILITIES).fields
    assert (gpio["gpis"], gpio["gpos"]) == (
        want["GPIOCapabilities"]["NumGPIs"],
        want["GPIOCapabilities"]["NumGPOs"],
    )
    assert [
        (p.fields["antenna"], bytes(p.fields["protocol_ids"]))
        for p in general.find_all(ParamType.PER_ANTENNA_AIR_PROTOCOL)
    ] == [(a["AntennaID"], b64(a["AirProtocolIDs"])) for a in want["PerAntennaAirProtocols"]]

    capabilities = one(message.params, ParamType.LLRP_CAPABILITIES).fields
    want = expected["LLRPCapabilities"]
    flags = capabilities["flags"]
    assert flags["can_do_rf_survey"] == want["CanDoRFSurvey"]
    assert flags["can_report_buffer_fill_warning"] == want["CanReportBufferFillWarning"]
    assert flags["supports_client_request_opspec"] == want["SupportsClientRequestOpSpec"]
    assert (
        flags["can_do_tag_inventory_state_aware_singulation"]
        == want["CanDoTagInventoryStateAwareSingulation"]
    )
    assert flags["supports_event_and_report_holding"] == want["SupportsEventsAndReportHolding"]
    assert capabilities["max_priority_level"] == want["MaxPriorityLevelSupported"]
    assert capabilities["client_request_opspec_timeout_ms"] == want["ClientRequestedOpSpecTimeout"]
    assert capabilities["max_rospecs"] == want["MaxROSpecs"]
    assert capabilities["max_specs_per_rospec"] == want["MaxSpecsPerROSpec"]
    assert (
        capabilities["max_inventory_parameter_specs_per_aispec"]
        == want["MaxInventoryParameterSpecsPerAISpec"]
    )
    assert capabilities["max_access_specs"] == want["MaxAccessSpecs"]
    assert capabilities["max_opspecs_per_access_spec"] == want["MaxOpSpecsPerAccessSpec"]

    regulatory = one(message.params, ParamType.REGULATORY_CAPABILITIES)
    want = expected["RegulatoryCapabilities"]
    assert regulatory.fields == {
        "country_code": want["CountryCode"],
        "communications_standard": want["CommunicationsStandard"],
    }
    uhf = one(regulatory.params, ParamType.UHF_BAND_CAPABILITIES)
    want = want["UHFBandCapabilities"]
    assert [
        {"Index": p.fields["index"], "TransmitPowerValue": p.fields["transmit_power_cdbm"]}
        for p in uhf.find_all(ParamType.TRANSMIT_POWER_LEVEL_TABLE_ENTRY)
    ] == want["TransmitPowerLevels"]
    frequency = one(uhf.params, ParamType.FREQUENCY_INFORMATION)
    assert frequency.fields["flags"]["hopping"] == want["FrequencyInformation"]["Hopping"]
    assert [
        {"HopTableID": p.fields["hop_table_id"], "Frequencies": p.fields["frequencies_khz"]}
        for p in frequency.find_all(ParamType.FREQUENCY_HOP_TABLE)
    ] == want["FrequencyInformation"]["FrequencyHopTables"]
    assert want["FrequencyInformation"]["FixedFrequencyTable"] is None
    modes = one(uhf.params, ParamType.C1G2_UHF_RF_MODE_TABLE).find_all(ParamType.C1G2_UHF_RF_MODE_TABLE_ENTRY)
    assert [
        {
            "ModeID": m.fields["mode_id"],
            "DivideRatio": int(m.fields["flags"]["divide_ratio_64_3"]),
            "IsEPCHagConformant": m.fields["flags"]["epc_hag_conformant"],
            "Modulation": m.fields["modulation"],
            "ForwardLinkModulation": m.fields["forward_link_modulation"],
            "SpectralMask": m.fields["spectral_mask"],
            "BackscatterDataRate": m.fields["backscatter_data_rate"],
            "PIERatio": m.fields["pie_ratio"],
            "MinTariTime": m.fields["min_tari_ns"],
            "MaxTariTime": m.fields["max_tari_ns"],
            "StepTariTime": m.fields["step_tari_ns"],
        }
        for m in modes
    ] == want["C1G2RFModes"]["UHFC1G2RFModeTableEntries"]

    c1g2 = one(message.params, ParamType.C1G2_LLRP_CAPABILITIES).fields
    want = expected["C1G2LLRPCapabilities"]
    assert c1g2 == {
        "flags": {
            "supports_block_erase": want["SupportsBlockErase"],
            "supports_block_write": want["SupportsBlockWrite"],
            "supports_block_permalock": want["SupportsBlockPermalock"],
            "supports_tag_recommissioning": want["SupportsTagRecommissioning"],
            "supports_umi_method_2": want["SupportsUMIMethod2"],
            "supports_xpc": want["SupportsXPC"],
        },
        "max_select_filters_per_query": want["MaxSelectFiltersPerQuery"],
    }
    assert expected["Custom"] is None
    assert len(message.params) == 4


def test_vector_reader_config() -> None:
    message, expected = vector(VECTORS / "GetReaderConfigResponse-000.bytes")
    assert isinstance(message, llrp.Response)
    params = message.params
    identification = one(params, ParamType.IDENTIFICATION).fields
    assert identification["id_type"] == expected["Identification"]["IDType"]
    assert identification["reader_id"] == b64(expected["Identification"]["ReaderID"])
    assert [
        {
            "AntennaConnected": p.fields["flags"]["connected"],
            "AntennaID": p.fields["antenna"],
            "AntennaGain": p.fields["gain_cdbi"],
        }
        for p in params
        if p.type == ParamType.ANTENNA_PROPERTIES
    ] == expected["AntennaProperties"]
    configurations = [p for p in params if p.type == ParamType.ANTENNA_CONFIGURATION]
    assert len(configurations) == len(expected["AntennaConfigurations"]) == 4
    for config, want in zip(configurations, expected["AntennaConfigurations"], strict=True):
        assert config.fields["antenna"] == want["AntennaID"]
        assert (
            one(config.params, ParamType.RF_RECEIVER).fields["receive_sensitivity_index"]
            == want["RFReceiver"]
        )
        transmitter = one(config.params, ParamType.RF_TRANSMITTER).fields
        assert transmitter == {
            "hop_table_id": want["RFTransmitter"]["HopTableID"],
            "channel_index": want["RFTransmitter"]["ChannelIndex"],
            "transmit_power_index": want["RFTransmitter"]["TransmitPowerIndex"],
        }
        inventory = one(config.params, ParamType.C1G2_INVENTORY_COMMAND)
        command = want["C1G2InventoryCommand"]
        assert inventory.fields["flags"]["tag_inventory_state_aware"] == command["TagInventoryStateAware"]
        assert inventory.find(ParamType.C1G2_FILTER) is None and command["Filters"] is None
        control = one(inventory.params, ParamType.C1G2_RF_CONTROL).fields
        assert (control["mode_index"], control["tari_ns"]) == (
            command["RFControl"]["RFModeID"],
            command["RFControl"]["Tari"],
        )
        singulation = one(inventory.params, ParamType.C1G2_SINGULATION_CONTROL)
        assert singulation.fields["flags"]["session"] == command["SingulationControl"]["Session"]
        assert singulation.fields["tag_population"] == command["SingulationControl"]["TagPopulation"]
        assert singulation.fields["tag_transit_time_ms"] == command["SingulationControl"]["TagTransitTime"]
    notification = one(params, ParamType.READER_EVENT_NOTIFICATION_SPEC)
    assert [
        {"ReaderEventType": p.fields["event_type"], "NotificationEnabled": p.fields["flags"]["enabled"]}
        for p in notification.params
    ] == expected["ReaderEventNotificationSpec"]["EventNotificationStates"]
    report = llrp.RoReportSpec.from_parameter(one(params, ParamType.RO_REPORT_SPEC))
    want = expected["ROReportSpec"]
    selector = want["TagReportContentSelector"]
    memory = selector["C1G2EPCMemorySelector"]
    assert report == llrp.RoReportSpec(
        want["Trigger"],
        want["N"],
        llrp.TagReportContent(
            rospec_id=selector["EnableROSpecID"],
            spec_index=selector["EnableSpecIndex"],
            inventory_parameter_spec_id=selector["EnableInventoryParamSpecID"],
            antenna=selector["EnableAntennaID"],
            channel_index=selector["EnableChannelIndex"],
            peak_rssi=selector["EnablePeakRSSI"],
            first_seen=selector["EnableFirstSeenTimestamp"],
            last_seen=selector["EnableLastSeenTimestamp"],
            seen_count=selector["EnableTagSeenCount"],
            access_spec_id=selector["EnableAccessSpecID"],
            crc=memory["CRCEnabled"],
            pc=memory["PCBitsEnabled"],
            xpc=memory["XPCBitsEnabled"],
        ),
    )
    assert one(params, ParamType.ACCESS_REPORT_SPEC).fields["trigger"] == expected["AccessReportSpec"]
    assert (
        one(params, ParamType.LLRP_CONFIGURATION_STATE_VALUE).fields["state"]
        == expected["LLRPConfigurationStateValue"]
    )
    keepalive = llrp.KeepaliveSpec.from_parameter(one(params, ParamType.KEEPALIVE_SPEC))
    assert keepalive == llrp.KeepaliveSpec(
        expected["KeepAliveSpec"]["Trigger"] == 1, expected["KeepAliveSpec"]["Interval"]
    )
    assert [
        {"Port": p.fields["gpi_port"], "Enabled": p.fields["flags"]["enabled"], "State": p.fields["state"]}
        for p in params
        if p.type == ParamType.GPI_PORT_CURRENT_STATE
    ] == expected["GPIPortCurrentStates"]
    assert [
        {"Port": p.fields["gpo_port"], "Data": p.fields["flags"]["data"]}
        for p in params
        if p.type == ParamType.GPO_WRITE_DATA
    ] == expected["GPOWriteData"]
    events_and_reports = one(params, ParamType.EVENTS_AND_REPORTS).fields
    assert (
        events_and_reports["flags"]["hold_events_and_reports_upon_reconnect"] == expected["EventsAndReports"]
    )


# ------------------------------------------------------------------------------------------ reference bytes


def test_header_layout() -> None:
    # Version 1 in bits 12..10, the type in the low 10 bits; the length counts the header.
    assert llrp.encode_message(llrp.KeepaliveAck(), 5) == bytes.fromhex("0448 0000000A 00000005")
    assert llrp.encode_message(llrp.KeepaliveAck(), 5, version=2) == bytes.fromhex("0848 0000000A 00000005")
    assert llrp.encode_message(llrp.GetReaderCapabilities(), 1) == bytes.fromhex("0401 0000000B 00000001 00")
    assert llrp.encode_message(llrp.DeleteRoSpec(0), 2) == bytes.fromhex("0415 0000000E 00000002 00000000")
    assert llrp.encode_message(llrp.StartRoSpec(1), 3) == bytes.fromhex("0416 0000000E 00000003 00000001")
    assert llrp.encode_message(llrp.CloseConnection(), 9) == bytes.fromhex("040E 0000000A 00000009")
    assert llrp.encode_message(llrp.GetReport(), 1) == bytes.fromhex("043C 0000000A 00000001")


def test_reference_set_reader_config() -> None:
    message = llrp.SetReaderConfig(keepalive=llrp.KeepaliveSpec(True, 10_000))
    # ResetToFactoryDefault 0, then KeepaliveSpec (TLV 220, length 9): periodic, 10,000 ms.
    assert llrp.encode_message(message, 4) == bytes.fromhex("0403 00000014 00000004 00 00DC 0009 01 00002710")


def test_reference_tag_report_data() -> None:
    tag = llrp.TagReport(
        epc=bytes.fromhex("300833B2DDD9014000000001"),
        antenna=1,
        peak_rssi=-60,
        channel_index=7,
        first_seen_utc=1_700_000_000_123_456,
        seen_count=2,
        pc=0x3000,
    )
    raw = llrp.encode_tag_report(tag)
    assert raw == bytes.fromhex(
        "00F0 0028"  # TagReportData, 40 bytes
        "8D 300833B2DDD9014000000001"  # EPC-96 (TV 13)
        "81 0001"  # AntennaID (TV 1)
        "86 C4"  # PeakRSSI -60 dBm (TV 6)
        "87 0007"  # ChannelIndex (TV 7)
        "82 00060A2418202240"  # FirstSeenTimestampUTC, microseconds (TV 2)
        "88 0002"  # TagSeenCount (TV 8)
        "8C 3000"  # C1G2 PC (TV 12)
    )
    assert llrp.parse_tag_report(raw, 4) == llrp.parse_tag_report_spec(raw[4:]) == tag


def test_reference_epc_data() -> None:
    # A 128-bit EPC comes as EPCData (TLV 241): a bit count, then the bits.
    tag = llrp.TagReport(epc=bytes(range(16)), epc_bits=128, antenna=2)
    raw = llrp.encode_tag_report(tag)
    assert raw[4:12] == bytes.fromhex("00F1 0016 0080 0001")
    assert llrp.parse_tag_report(raw, 4) == tag


def test_reference_access_spec_messages() -> None:
    # DELETE_ACCESSSPEC (41) 0, what sllurp sends first: every AccessSpec; ENABLE (42), DISABLE (43) take an
    # id the same way; GET_ACCESSSPECS (44) has no body.
    assert llrp.encode_message(llrp.DeleteAccessSpec(0), 1) == bytes.fromhex(
        "0429 0000000E 00000001 00000000"
    )
    assert llrp.encode_message(llrp.EnableAccessSpec(7), 2) == bytes.fromhex(
        "042A 0000000E 00000002 00000007"
    )
    assert llrp.encode_message(llrp.DisableAccessSpec(7), 3) == bytes.fromhex(
        "042B 0000000E 00000003 00000007"
    )
    assert llrp.encode_message(llrp.GetAccessSpecs(), 4) == bytes.fromhex("042C 0000000A 00000004")
    read_tid = Parameter(
        ParamType.C1G2_READ,
        {
            "opspec_id": 1,
            "access_password": 0,
            "flags": {"memory_bank": 2},
            "word_pointer": 0,
            "word_count": 6,
        },
    )
    any_tag = Parameter(
        ParamType.C1G2_TARGET_TAG,
        {
            "flags": {"memory_bank": 1, "match": True},
            "pointer": 0x20,
            "mask": {"bits": 0, "data": b""},
            "data": {"bits": 0, "data": b""},
        },
    )
    spec = llrp.AccessSpec(
        7, (Parameter(ParamType.C1G2_TAG_SPEC, {}, (any_tag,)), read_tid), report_trigger=1
    )
    assert llrp.encode_message(llrp.AddAccessSpec(spec), 5) == bytes.fromhex(
        "0428 00000048 00000005"  # ADD_ACCESSSPEC (40), 72 bytes
        "00CF 003E"  # AccessSpec (207), 62 bytes
        "00000007 0000 01 00 00000000"  # id 7, any antenna, Gen2, disabled, any ROSpec
        "00D0 0007 00 0000"  # AccessSpecStopTrigger (208): null
        "00D1 0022"  # AccessCommand (209), 34 bytes
        "0152 000F"  # C1G2TagSpec (338)
        "0153 000B 60 0020 0000 0000"  # C1G2TargetTag (339): EPC bank, match, pointer 32, no mask, no data
        "0155 000F 0001 00000000 80 0000 0006"  # C1G2Read (341): opspec 1, no password, TID, words 0..5
        "00EF 0005 01"  # AccessReportSpec (239): at the end of the AccessSpec
    )


def test_reference_tag_observation_trigger() -> None:
    # sllurp's report_every_n_tags=5: AISpecStopTrigger (184) of type 3, with a TagObservationTrigger (185):
    # upon 5 tag observations, no timeout.
    ai = llrp.AiSpec(
        (1,),
        llrp.StopTrigger.TAG_OBSERVATION,
        0,
        tag_observation=llrp.TagObservation(llrp.TagObservationType.N_TAGS_OR_TIMEOUT, 5),
    )
    stop = llrp.encode_parameter(ai.parameter())[8:]
    assert stop[:25] == bytes.fromhex("00B8 0019 03 00000000 00B9 0010 00 00 0005 0000 0000 00000000")


def test_status_says_what_went_wrong() -> None:
    status = llrp.LlrpStatus(
        llrp.StatusCode.M_PARAMETER_ERROR,
        "bad ROSpec",
        parameter_error=(ParamType.AISPEC, llrp.StatusCode.P_FIELD_ERROR),
    )
    assert str(status) == "M_PARAMETER_ERROR (100): bad ROSpec [parameter AISpec, code 201]"
    assert not status.ok
    assert str(llrp.LlrpStatus()) == "M_SUCCESS (0)"


def test_response_types() -> None:
    assert llrp.response_type(llrp.MessageType.ADD_ROSPEC) == llrp.MessageType.ADD_ROSPEC_RESPONSE
    assert llrp.response_type(llrp.MessageType.CLOSE_CONNECTION) == llrp.MessageType.CLOSE_CONNECTION_RESPONSE
    assert llrp.response_type(llrp.MessageType.KEEPALIVE_ACK) is None


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_vendor_parameters_are_skipped_not_fatal() -> None:
    custom = Parameter(llrp.CUSTOM, {"vendor": 99_999, "subtype": 7, "data": b"\x01\x02\x03"})
    unknown = Parameter(900, {"data": b"\xff" * 5})
    tag = llrp.TagReport(epc=bytes(12), antenna=1, peak_rssi=-50, extra=(custom, unknown))
    report = llrp.RoAccessReport((tag, llrp.TagReport(epc=b"\x01" * 12)), extra=(custom,))
    parsed = llrp.parse_message(llrp.decode_frame(llrp.encode_message(report, 1)))
    assert parsed == report
    assert isinstance(parsed, llrp.RoAccessReport) and parsed.skipped == 3
    events = llrp.ReaderEventNotification((llrp.AntennaEvent(2, False),), 5, extra=(custom,))
    assert llrp.parse_message(llrp.decode_frame(llrp.encode_message(events, 1))) == events


def test_a_bad_tag_is_skipped_and_the_others_kept() -> None:
    good = llrp.encode_tag_report(llrp.TagReport(epc=bytes(12), antenna=1))
    unknown_tv = bytes.fromhex("00F0 0014") + bytes.fromhex("8D") + bytes(12) + bytes.fromhex("FF 0001")
    no_epc = bytes.fromhex("00F0 0007 810001")
    report = llrp.parse_ro_access_report(good + unknown_tv + no_epc + good)
    assert len(report.tags) == 2
    assert len(report.errors) == 2
    assert "unknown TV parameter type 127" in report.errors[0]
    assert "without an EPC" in report.errors[1]
    # A TLV whose length runs past the end ends the report: what came before is kept.
    cut = llrp.parse_ro_access_report(good + good[:-3])
    assert len(cut.tags) == 1 and "impossible length" in cut.errors[0]


def test_parse_errors_say_what_is_wrong() -> None:
    with pytest.raises(DecodeError, match="without its LLRPStatus"):
        llrp.parse_message(llrp.Frame(llrp.MessageType.ADD_ROSPEC_RESPONSE, 1, b""))
    with pytest.raises(DecodeError, match="KEEPALIVE has no body"):
        llrp.parse_message(llrp.Frame(llrp.MessageType.KEEPALIVE, 1, b"\x00"))
    with pytest.raises(DecodeError, match="ConnectionAttemptEvent: fields do not fit"):
        llrp.decode_parameters(bytes.fromhex("0100 0005 00"))
    with pytest.raises(DecodeError, match="length mismatch"):
        llrp.decode_frame(llrp.encode_message(llrp.KeepaliveAck(), 1) + b"\x00")
    with pytest.raises(DecodeError, match="bad length"):
        llrp.decode_frame(bytes.fromhex("0448 00000009 00000001"))


def test_unknown_message_types_are_kept_raw() -> None:
    for mtype, body in ((llrp.MessageType.CUSTOM_MESSAGE, b"\x00\x00\x65\x1a\x01abc"), (999, b"\x00")):
        message = llrp.parse_message(llrp.Frame(mtype, 3, body))
        assert message == llrp.UnknownMessage(mtype, body)
        assert llrp.encode_message(message, 3) == llrp.encode_frame(llrp.Frame(mtype, 3, body))


def test_encode_rejects_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        llrp.encode_message(llrp.DeleteRoSpec(2**32), 1)
    with pytest.raises(EncodeError):
        llrp.encode_message(llrp.KeepaliveAck(), 2**32)
    with pytest.raises(EncodeError):
        llrp.encode_tag_report(llrp.TagReport(epc=bytes(3), epc_bits=40))
    with pytest.raises(EncodeError):
        llrp.encode_tag_report(llrp.TagReport(epc=bytes(12), antenna=70_000))
    with pytest.raises(EncodeError):
        llrp.encode_parameter(Parameter(llrp.ParamType.UTC_TIMESTAMP, {"microseconds": -1}))


# ------------------------------------------------------------------------------------------ round trips

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
customs = st.builds(
    lambda vendor, subtype, data: Parameter(
        llrp.CUSTOM, {"vendor": vendor, "subtype": subtype, "data": data}
    ),
    u32,
    u32,
    st.binary(max_size=12),
)
unknown_tlvs = st.builds(
    lambda ptype, data: Parameter(ptype, {"data": data}),
    st.integers(128, 1022).filter(lambda t: t not in llrp.TLV_SPECS),
    st.binary(max_size=12),
)
raw_tvs = st.one_of(
    st.builds(lambda v: Parameter(ParamType.CLIENT_REQUEST_OPSPEC_RESULT, {"value": v}), u16),
    st.builds(lambda v: Parameter(ParamType.OPSPEC_ID, {"value": v}), u16),
    st.builds(
        lambda a, b: Parameter(
            ParamType.C1G2_SINGULATION_DETAILS, {"value": {"collision_slots": a, "empty_slots": b}}
        ),
        u16,
        u16,
    ),
)
skippable = st.one_of(customs, unknown_tlvs)


@st.composite
def tag_reports(draw: st.DrawFn) -> llrp.TagReport:
    bits = draw(st.one_of(st.just(96), st.integers(0, 496)))
    epc = draw(st.binary(min_size=(bits + 7) // 8, max_size=(bits + 7) // 8))

    def maybe(strategy: st.SearchStrategy[int]) -> int | None:
        return draw(st.one_of(st.none(), strategy))

    return llrp.TagReport(
        epc=epc,
        epc_bits=bits,
        antenna=maybe(u16),
        peak_rssi=maybe(st.integers(-128, 127)),
        channel_index=maybe(u16),
        first_seen_utc=maybe(u64),
        last_seen_utc=maybe(u64),
        first_seen_uptime=maybe(u64),
        last_seen_uptime=maybe(u64),
        seen_count=maybe(u16),
        pc=maybe(u16),
        xpc_w1=maybe(u16),
        xpc_w2=maybe(u16),
        crc=maybe(u16),
        rospec_id=maybe(u32),
        spec_index=maybe(u16),
        inventory_parameter_spec_id=maybe(u16),
        access_spec_id=maybe(u32),
        extra=tuple(draw(st.lists(st.one_of(skippable, raw_tvs), max_size=3))),
    )


statuses = st.builds(
    llrp.LlrpStatus,
    st.one_of(st.sampled_from(list(llrp.StatusCode)), u16),
    text,
    st.one_of(st.none(), st.tuples(u16, u16)),
    st.one_of(st.none(), st.tuples(u16, u16)),
)
contents = st.builds(
    llrp.TagReportContent, *(st.booleans() for _ in dataclasses.fields(llrp.TagReportContent))
)
report_specs = st.builds(llrp.RoReportSpec, st.integers(0, 6), u16, contents)
tag_observations = st.builds(llrp.TagObservation, st.integers(0, 4), u16, u16, u16, u32)
ai_specs = st.builds(
    llrp.AiSpec,
    st.lists(u16, max_size=4).map(tuple),
    st.integers(0, 3),
    u32,
    st.lists(st.tuples(u16, u8), min_size=1, max_size=2).map(tuple),
    st.one_of(st.none(), tag_observations),
)


@st.composite
def rospecs(draw: st.DrawFn) -> llrp.RoSpec:
    start = draw(st.integers(0, 3))
    periodic = start == llrp.StartTrigger.PERIODIC
    return llrp.RoSpec(
        rospec_id=draw(u32),
        ai_specs=tuple(draw(st.lists(ai_specs, min_size=1, max_size=3))),
        priority=draw(st.integers(0, 7)),
        state=draw(st.integers(0, 2)),
        start_trigger=start,
        start_offset_ms=draw(u32) if periodic else 0,
        start_period_ms=draw(u32) if periodic else 0,
        stop_trigger=draw(st.integers(0, 2)),
        stop_duration_ms=draw(u32),
        report=draw(st.one_of(st.none(), report_specs)),
    )


bit_strings = st.integers(0, 64).flatmap(
    lambda bits: st.builds(
        lambda data: {"bits": bits, "data": data},
        st.binary(min_size=(bits + 7) // 8, max_size=(bits + 7) // 8),
    )
)
memory_banks = st.builds(lambda bank: {"memory_bank": bank}, st.integers(0, 3))
target_tags = st.builds(
    lambda bank, match, pointer, mask, data: Parameter(
        ParamType.C1G2_TARGET_TAG,
        {"flags": {"memory_bank": bank, "match": match}, "pointer": pointer, "mask": mask, "data": data},
    ),
    st.integers(0, 3),
    st.booleans(),
    u16,
    bit_strings,
    bit_strings,
)
tag_specs = st.builds(
    lambda targets: Parameter(ParamType.C1G2_TAG_SPEC, {}, tuple(targets)),
    st.lists(target_tags, min_size=1, max_size=2),
)
opspecs = st.one_of(
    st.builds(
        lambda op, password, bank, pointer, count: Parameter(
            ParamType.C1G2_READ,
            {
                "opspec_id": op,
                "access_password": password,
                "flags": bank,
                "word_pointer": pointer,
                "word_count": count,
            },
        ),
        u16,
        u32,
        memory_banks,
        u16,
        u16,
    ),
    *(
        st.builds(
            lambda op, password, bank, pointer, words, ptype=ptype: Parameter(
                ptype,
                {
                    "opspec_id": op,
                    "access_password": password,
                    "flags": bank,
                    "word_pointer": pointer,
                    "data": words,
                },
            ),
            u16,
            u32,
            memory_banks,
            u16,
            st.lists(u16, max_size=4),
        )
        for ptype in (ParamType.C1G2_WRITE, ParamType.C1G2_BLOCK_WRITE)
    ),
    st.builds(
        lambda op, password, bank, pointer, count: Parameter(
            ParamType.C1G2_BLOCK_ERASE,
            {
                "opspec_id": op,
                "access_password": password,
                "flags": bank,
                "word_pointer": pointer,
                "word_count": count,
            },
        ),
        u16,
        u32,
        memory_banks,
        u16,
        u16,
    ),
    st.builds(
        lambda op, password: Parameter(ParamType.C1G2_KILL, {"opspec_id": op, "kill_password": password}),
        u16,
        u32,
    ),
    st.builds(
        lambda op, password, payloads: Parameter(
            ParamType.C1G2_LOCK,
            {"opspec_id": op, "access_password": password},
            tuple(
                Parameter(ParamType.C1G2_LOCK_PAYLOAD, {"privilege": p, "data_field": f}) for p, f in payloads
            ),
        ),
        u16,
        u32,
        st.lists(st.tuples(u8, u8), min_size=1, max_size=3),
    ),
)
access_specs = st.builds(
    llrp.AccessSpec,
    u32,
    st.builds(lambda tags, ops: (tags, *ops), tag_specs, st.lists(opspecs, min_size=1, max_size=3)),
    u16,
    u8,
    st.booleans(),
    u32,
    st.integers(0, 1),
    u16,
    st.one_of(st.none(), st.integers(0, 1)),
    st.lists(customs, max_size=2).map(tuple),
)
reader_events = st.one_of(
    st.builds(llrp.ConnectionAttemptEvent, st.integers(0, 4)),
    st.just(llrp.ConnectionCloseEvent()),
    st.builds(llrp.AntennaEvent, u16, st.booleans()),
    st.builds(llrp.BufferLevelWarningEvent, st.integers(0, 100)),
    st.just(llrp.BufferOverflowEvent()),
    st.builds(
        llrp.ReaderExceptionEvent,
        text,
        st.lists(st.builds(lambda v: Parameter(ParamType.ANTENNA_ID, {"value": v}), u16), max_size=1).map(
            tuple
        ),
    ),
    st.builds(llrp.RoSpecEvent, st.integers(0, 2), u32, u32),
    st.builds(llrp.AiSpecEvent, st.just(0), u32, u16),
    st.builds(llrp.HoppingEvent, u16, u16),
    st.builds(llrp.GpiEvent, u16, st.booleans()),
    st.builds(llrp.RfSurveyEvent, st.integers(0, 1), u32, u16),
    st.builds(llrp.SpecLoopEvent, u32, u32),
)
generic_params = st.one_of(
    customs,
    st.builds(
        lambda t, i: Parameter(ParamType.IDENTIFICATION, {"id_type": t, "reader_id": i}),
        u8,
        st.binary(max_size=8),
    ),
    st.builds(lambda k: k.parameter(), st.builds(llrp.KeepaliveSpec, st.booleans(), u32)),
    st.builds(lambda spec: spec.parameter(), access_specs),
)
messages: st.SearchStrategy[llrp.Message] = st.one_of(
    st.builds(llrp.GetReaderCapabilities, u8),
    st.builds(llrp.GetReaderConfig, u16, u8, u16, u16),
    st.builds(
        llrp.SetReaderConfig,
        st.booleans(),
        st.lists(st.tuples(st.sampled_from(list(llrp.ReaderEventType)), st.booleans()), max_size=4).map(
            tuple
        ),
        st.one_of(st.none(), report_specs),
        st.one_of(st.none(), st.builds(llrp.KeepaliveSpec, st.booleans(), u32)),
        st.one_of(st.none(), st.booleans()),
        st.lists(customs, max_size=2).map(tuple),
    ),
    st.builds(llrp.AddRoSpec, rospecs()),
    st.builds(llrp.AddAccessSpec, access_specs),
    *(
        st.builds(cls, u32)
        for cls in (
            llrp.DeleteRoSpec,
            llrp.StartRoSpec,
            llrp.StopRoSpec,
            llrp.EnableRoSpec,
            llrp.DisableRoSpec,
            llrp.DeleteAccessSpec,
            llrp.EnableAccessSpec,
            llrp.DisableAccessSpec,
        )
    ),
    *(
        st.just(cls())
        for cls in (
            llrp.GetRoSpecs,
            llrp.GetAccessSpecs,
            llrp.GetReport,
            llrp.EnableEventsAndReports,
            llrp.KeepaliveAck,
            llrp.CloseConnection,
            llrp.Keepalive,
        )
    ),
    st.builds(
        llrp.ReaderEventNotification,
        st.lists(reader_events, max_size=3).map(tuple),
        u64,
        st.booleans(),
        st.lists(skippable, max_size=2).map(tuple),
    ),
    st.builds(
        llrp.RoAccessReport,
        st.lists(tag_reports(), max_size=4).map(tuple),
        st.lists(skippable, max_size=2).map(tuple),
    ),
    st.builds(
        llrp.Response,
        st.sampled_from(
            sorted(
                t
                for t in (llrp.response_type(r) for r in llrp.MessageType)
                if t
                not in (
                    None,
                    llrp.MessageType.GET_SUPPORTED_VERSION_RESPONSE,
                    llrp.MessageType.CLIENT_REQUEST_OP_RESPONSE,
                )
            )
        ),
        statuses,
        st.lists(generic_params, max_size=3).map(tuple),
    ),
    st.builds(llrp.ErrorMessage, statuses),
)


@given(messages, u32, st.sampled_from(llrp.SUPPORTED_VERSIONS))
def test_message_round_trip(message: llrp.Message, message_id: int, version: int) -> None:
    raw = llrp.encode_message(message, message_id, version)
    frame = llrp.decode_frame(raw)
    assert (frame.message_type, frame.message_id, frame.version) == (
        message.message_type,
        message_id,
        version,
    )
    assert llrp.parse_message(frame) == message


@given(access_specs)
def test_access_spec_round_trip(spec: llrp.AccessSpec) -> None:
    # The typed AccessSpec, its generic parameter tree (every OpSpec through its construct definition) and
    # the bytes agree, both ways; a GET_ACCESSSPECS_RESPONSE lists them as parameters.
    raw = llrp.encode_parameter(spec.parameter())
    (param,) = llrp.decode_parameters(raw)
    assert param == spec.parameter()
    assert llrp.AccessSpec.from_parameter(param) == spec
    listed = llrp.Response(llrp.MessageType.GET_ACCESSSPECS_RESPONSE, llrp.LlrpStatus(), (param, param))
    parsed = llrp.parse_message(llrp.decode_frame(llrp.encode_message(listed, 3)))
    assert isinstance(parsed, llrp.Response)
    assert [llrp.AccessSpec.from_parameter(p) for p in parsed.params] == [spec, spec]


@given(ai_specs)
def test_ai_spec_round_trip(ai: llrp.AiSpec) -> None:
    assert llrp.AiSpec.from_parameter(llrp.decode_parameters(llrp.encode_parameter(ai.parameter()))[0]) == ai


@given(tag_reports())
def test_tag_report_round_trip_through_both_decoders(tag: llrp.TagReport) -> None:
    raw = llrp.encode_tag_report(tag)
    assert llrp.parse_tag_report_spec(raw[4:]) == tag
    # Twice: the first may learn the layout, the second then decodes through it.
    assert llrp.parse_tag_report(raw, 4) == tag
    assert llrp.parse_tag_report(b"\x00" + raw, 5) == tag


@given(tag_reports(), st.data())
def test_tag_fast_path_agrees_with_construct_spec_on_damaged_bodies(
    tag: llrp.TagReport, data: st.DataObject
) -> None:
    body = bytearray(llrp.encode_tag_report(tag)[4:])
    for _ in range(data.draw(st.integers(0, 3))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(u8)
    cut = data.draw(st.integers(0, len(body)))
    for candidate in (bytes(body), bytes(body[:cut])):
        _agree(candidate)


@given(st.binary(max_size=64))
def test_tag_fast_path_agrees_with_construct_spec_on_any_bytes(body: bytes) -> None:
    _agree(body)


def _agree(body: bytes) -> None:
    try:
        expected: llrp.TagReport | None = llrp.parse_tag_report_spec(body)
    except DecodeError:
        expected = None
    for _ in range(2):  # learning a layout, then using it
        try:
            got: llrp.TagReport | None = llrp.parse_tag_report(body)
        except DecodeError:
            got = None
        assert got == expected


@given(st.lists(tag_reports(), max_size=3), st.lists(skippable, max_size=2))
def test_report_fast_path_agrees_with_construct_spec(
    tags: list[llrp.TagReport], extra: list[Parameter]
) -> None:
    body = b"".join([*(llrp.encode_tag_report(t) for t in tags), *(llrp.encode_parameter(p) for p in extra)])
    assert llrp.parse_ro_access_report(body) == llrp.parse_ro_access_report_spec(body)


@given(st.binary(max_size=120))
def test_report_decoders_never_raise_but_decode_error(body: bytes) -> None:
    fast = llrp.parse_ro_access_report(body)
    try:
        spec = llrp.parse_ro_access_report_spec(body)
    except DecodeError:
        assert fast.errors  # the spec gives up where the fast path records why and stops
    else:
        assert fast.tags == spec.tags and fast.extra == spec.extra
        assert len(fast.errors) == len(spec.errors)


@given(st.sampled_from(sorted({int(t) for t in llrp.MessageType} | {999})), st.binary(max_size=80))
def test_parse_message_never_raises_but_decode_error(mtype: int, body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        llrp.parse_message(llrp.Frame(mtype, 1, body))


@given(st.binary(max_size=80))
def test_decode_parameters_never_raises_but_decode_error(data: bytes) -> None:
    try:
        params = llrp.decode_parameters(data)
    except DecodeError:
        return
    # What decodes re-encodes to the same bytes.
    assert b"".join(llrp.encode_parameter(p) for p in params) == data or _has_lenient_text(params)


def _has_lenient_text(params: tuple[Parameter, ...]) -> bool:
    """Strings are decoded leniently (bad UTF-8 replaced), so they may not re-encode to the same bytes."""
    return any(isinstance(value, str) for p in params for value in p.fields.values()) or any(
        _has_lenient_text(p.params) for p in params
    )


# ------------------------------------------------------------------------------------------ framer


def test_framer_reference_stream() -> None:
    first = llrp.encode_message(llrp.Keepalive(), 1)
    second = llrp.encode_message(llrp.ReaderEventNotification((llrp.ConnectionAttemptEvent(),), 12), 2)
    framer = llrp.LlrpFramer()
    assert framer.feed(first[:7]) == []
    assert framer.pending == 7
    assert framer.feed(first[7:] + second[:12]) == [llrp.decode_frame(first)]
    assert framer.feed(second[12:]) == [llrp.decode_frame(second)]
    assert framer.pending == 0 and framer.broken is None
    assert framer.stats.frames == 2 and framer.stats.bytes_skipped == 0


@pytest.mark.parametrize(
    ("header", "counter"),
    [
        ("0448 00000009 00000001", "bad_length"),  # shorter than its own header
        ("0448 FFFFFFF0 00000001", "bad_length"),  # absurdly large
        ("1C48 0000000A 00000001", "bad_version"),  # version 7: a stream out of step
    ],
)
def test_framer_breaks_on_a_header_that_lies(header: str, counter: str) -> None:
    good = llrp.encode_message(llrp.Keepalive(), 1)
    bad = bytes.fromhex(header)
    framer = llrp.LlrpFramer()
    assert framer.feed(good + bad + good) == [llrp.decode_frame(good)]
    assert framer.broken is not None and "out of step" in framer.broken
    assert getattr(framer.stats, counter) == 1
    assert framer.stats.bytes_skipped == len(bad) + len(good)
    # Once out of step it stays so: nothing after can be framed.
    assert framer.feed(good) == []
    assert framer.stats.bytes_skipped == len(bad) + 2 * len(good)
    framer.reset()
    assert framer.feed(good) == [llrp.decode_frame(good)]


def test_framer_limit_is_configurable() -> None:
    report = llrp.encode_message(llrp.RoAccessReport((llrp.TagReport(epc=bytes(12)),) * 10), 1)
    assert llrp.LlrpFramer(max_length=len(report)).feed(report) != []
    small = llrp.LlrpFramer(max_length=len(report) - 1)
    assert small.feed(report) == [] and small.stats.bad_length == 1


@given(st.lists(messages, max_size=6))
def test_framed_messages_parse_back_to_themselves(batch: list[llrp.Message]) -> None:
    raws = [llrp.encode_message(m, i) for i, m in enumerate(batch)]
    framer = llrp.LlrpFramer()
    found = framer.feed(b"".join(raws))
    assert found == [llrp.decode_frame(raw) for raw in raws]
    assert [llrp.parse_message(f) for f in found] == batch


MAX_LENGTH = 1 << 16
"""The framer's limit in the suite: random garbage gives a longer length almost always, so it breaks."""


class TestLlrpFramer(FramerSuite[llrp.Frame]):
    """The framer contract (tests/protocols/framer_suite.py), for a framer that frames by length alone: it
    cannot resynchronise, it breaks (and a new connection starts over)."""

    # Frames of any type and body: what the bodies say is the codec's, and messages framed and parsed back
    # are tested above.
    frames = st.builds(
        llrp.Frame,
        st.integers(0, 0x3FF),
        u32,
        st.binary(max_size=300),
        st.sampled_from(llrp.SUPPORTED_VERSIONS),
    )
    max_pending = MAX_LENGTH
    rejections = ("bad_length", "bad_version")
    resynchronises = False

    def framer(self) -> llrp.LlrpFramer:
        return llrp.LlrpFramer(max_length=MAX_LENGTH)

    def encode(self, frame: llrp.Frame) -> bytes:
        return llrp.encode_frame(frame)

    def decode(self, raw: bytes) -> llrp.Frame:
        return llrp.decode_frame(raw)

    def redecoded(self, raw: bytes, frame: llrp.Frame) -> None:
        # The reserved bits of the header are not kept: the rest is.
        assert llrp.encode_frame(frame)[0] == raw[0] & 0x1F
        assert llrp.encode_frame(frame)[1:] == raw[1:]

    def damage(self, raw: bytes, data: st.DataObject) -> tuple[bytes, tuple[str, ...]]:
        # A header that lies: a version this side does not speak, or an impossible length.
        bad = bytearray(raw)
        how = data.draw(st.sampled_from(["version", "short", "long"]), label="damage")
        if how == "version":
            version = data.draw(st.sampled_from(sorted(set(range(8)) - set(llrp.SUPPORTED_VERSIONS))))
            bad[0] = (bad[0] & 0xE3) | (version << 2)
            return bytes(bad), ("bad_version",)
        length = data.draw(st.integers(0, 9) if how == "short" else st.integers(MAX_LENGTH + 1, 2**32 - 1))
        bad[2:6] = length.to_bytes(4, "big")
        return bytes(bad), ("bad_length",)

    def broken(self, framer: Framer[llrp.Frame]) -> bool:
        assert isinstance(framer, llrp.LlrpFramer)
        return framer.broken is not None

    def restart(self, framer: Framer[llrp.Frame]) -> None:
        assert isinstance(framer, llrp.LlrpFramer)
        assert framer.broken is not None and "out of step" in framer.broken
        framer.reset()
