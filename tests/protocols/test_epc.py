"""EPC Tag Data Standard: reference EPCs, the partition tables both ways, invalid encodings, never-raising
decoding of arbitrary input, and pattern URIs."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocols.epc import SCHEMES, Epc, decode_epc, encode_epc, epc_uri, parse_pattern
from protocols.errors import EncodeError

# ---------------------------------------------------------------------------------------- reference EPCs

# GS1 EPC TDS, the worked example of the SGTIN-96 encoding (header 0x30, filter 3, partition 5: a 7-digit
# company prefix in 24 bits, a 6-digit item reference in 20 bits, serial 6789 in 38 bits).
TDS_SGTIN = "3074257BF7194E4000001A85"

# The R2000 reference tag of tests/protocols/test_r2000.py, decoded by hand from the TDS SGTIN-96 coding
# table: 0x30 header; next byte 0x08 = 000 010 00: filter 0, partition 2, so the company prefix is 34 bits
# and 10 digits, the item reference 10 bits and 3 digits (13 - 10), the serial the last 38 bits:
#   the 44 bits after the partition are 0x33B2DDD9014 >> 2 ... computed below from the raw integer.
R2000_EPC = "300833B2DDD9014000000001"


def test_tds_sgtin_96_example() -> None:
    decoded = decode_epc(TDS_SGTIN)
    assert decoded == Epc(
        scheme="sgtin-96",
        filter=3,
        components=("0614141", "812345", "6789"),
        uri="urn:epc:id:sgtin:0614141.812345.6789",
        tag_uri="urn:epc:tag:sgtin-96:3.0614141.812345.6789",
    )
    assert encode_epc("urn:epc:tag:sgtin-96:3.0614141.812345.6789") == bytes.fromhex(TDS_SGTIN)


def test_r2000_reference_epc_is_an_sgtin_96() -> None:
    value = int(R2000_EPC, 16)
    assert value >> 88 == 0x30  # SGTIN-96
    assert (value >> 85) & 7 == 0  # filter
    assert (value >> 82) & 7 == 2  # partition: company prefix 34 bits / 10 digits, item reference 10 / 3
    assert (value >> 48) & (2**34 - 1) == 867360217
    assert (value >> 38) & (2**10 - 1) == 5
    assert value & (2**38 - 1) == 1
    assert epc_uri(R2000_EPC) == "urn:epc:id:sgtin:0867360217.005.1"
    assert epc_uri(bytes.fromhex(R2000_EPC)) == "urn:epc:id:sgtin:0867360217.005.1"


# Hex/URI pairs published with a GS1 Tag Data Translation engine's test suite and with other open EPC
# codecs' tests (facts, not code), one or more per scheme; each was also checked by hand against the TDS
# coding tables (header, filter, partition, field widths).
VECTORS = [
    ("303613ACD83B9AC000000646", "urn:epc:tag:sgtin-96:1.8710966.061035.1606"),
    ("31105E30A7055F2CC0000000", "urn:epc:tag:sscc-96:0.12345678.090123456"),
    ("31AC16465751CCD0C2000000", "urn:epc:tag:sscc-96:5.023356789.30200002"),
    ("32305E30A7466800499602D2", "urn:epc:tag:sgln-96:1.12345678.9012.1234567890"),
    ("330C75BCD150030000000001", "urn:epc:tag:grai-96:0.123456789.012.1"),
    ("33140E511C56ED0000000001", "urn:epc:tag:grai-96:0.0234567.89012.1"),
    ("34344B5A1C00000000000001", "urn:epc:tag:giai-96:1.1234567.1"),
    ("3474257BF40000000000162E", "urn:epc:tag:giai-96:3.0614141.5678"),
    ("3500004D20004D20000004D2", "urn:epc:tag:gid-96:1234.1234.1234"),
    ("350007AB70425D4000000586", "urn:epc:tag:gid-96:31415.271828.1414"),
]


@pytest.mark.parametrize(("hex_epc", "tag_uri"), VECTORS)
def test_published_vectors(hex_epc: str, tag_uri: str) -> None:
    decoded = decode_epc(hex_epc)
    assert decoded is not None
    assert decoded.tag_uri == tag_uri
    scheme, body = tag_uri.removeprefix("urn:epc:tag:").split(":")
    pure_body = body if scheme == "gid-96" else body.split(".", 1)[1]
    assert decoded.uri == f"urn:epc:id:{scheme.removesuffix('-96')}:{pure_body}"
    assert epc_uri(hex_epc.lower()) == decoded.uri
    assert encode_epc(tag_uri) == bytes.fromhex(hex_epc)


def test_empty_fields_of_a_twelve_digit_company_prefix() -> None:
    # Partition 0: the GRAI asset type and the SGLN location reference have 0 digits, so they are empty.
    grai = encode_epc("urn:epc:id:grai:012345678901..5")
    assert (grai[1] >> 2) & 7 == 0  # partition 0
    assert epc_uri(grai) == "urn:epc:id:grai:012345678901..5"
    sgln = encode_epc("urn:epc:id:sgln:012345678901..0", filter=2)
    assert epc_uri(sgln) == "urn:epc:id:sgln:012345678901..0"
    assert decode_epc(sgln) == Epc(
        "sgln-96",
        2,
        ("012345678901", "", "0"),
        "urn:epc:id:sgln:012345678901..0",
        "urn:epc:tag:sgln-96:2.012345678901..0",
    )


def test_six_digit_company_prefix_sgtin() -> None:
    # Partition 6: 6-digit prefix in 20 bits, 7-digit item reference (indicator digit first) in 24 bits.
    raw = encode_epc("urn:epc:id:sgtin:999999.9999999.274877906943", filter=7)
    expected = (((0x30 << 3 | 7) << 3 | 6) << 20 | 999_999) << 24 | 9_999_999
    assert raw == (expected << 38 | (2**38 - 1)).to_bytes(12, "big")
    assert raw.hex().upper() == "30FBD08FE6259FFFFFFFFFFF"
    assert epc_uri(raw) == "urn:epc:id:sgtin:999999.9999999.274877906943"


# ------------------------------------------------------------------------------------- invalid encodings


def _sgtin_with(partition: int, company: int, item: int, serial: int = 1, header: int = 0x30) -> bytes:
    """Bits laid out by hand, bypassing the encoder's checks."""
    cp_bits = (40, 37, 34, 30, 27, 24, 20)[partition] if partition < 7 else 20
    value = ((header << 3 | 1) << 3 | partition) << cp_bits | company
    value = (value << (44 - cp_bits) | item) << 38 | serial
    return value.to_bytes(12, "big")


def test_partition_7_has_no_uri() -> None:
    assert decode_epc(_sgtin_with(7, 1, 1)) is None
    for header in (0x31, 0x32, 0x33, 0x34):
        raw = bytearray(encode_epc(f"urn:epc:tag:{SCHEMES[header - 0x30]}:0.{_example_body(header)}"))
        raw[1] |= 0b00011100  # partition bits -> 7
        assert decode_epc(bytes(raw)) is None, raw.hex()


def _example_body(header: int) -> str:
    return {
        0x31: "0614141.1234567890",
        0x32: "0614141.12345.400",
        0x33: "0614141.12345.400",
        0x34: "0614141.5678",
    }[header]


def test_company_prefix_or_reference_with_too_many_digits_has_no_uri() -> None:
    assert decode_epc(_sgtin_with(5, 9_999_999, 1)) is not None
    assert decode_epc(_sgtin_with(5, 10_000_000, 1)) is None  # 8 digits in a 7-digit prefix
    assert decode_epc(_sgtin_with(5, 1, 999_999)) is not None
    assert decode_epc(_sgtin_with(5, 1, 1_000_000)) is None  # 7 digits in a 6-digit item reference
    assert decode_epc(_sgtin_with(0, 1, 9)) is not None
    assert decode_epc(_sgtin_with(0, 1, 10)) is None  # partition 0: one digit (the indicator) only


def test_grai_with_a_twelve_digit_prefix_has_no_asset_type_bits() -> None:
    valid = int.from_bytes(encode_epc("urn:epc:id:grai:012345678901..5"), "big")
    assert decode_epc((valid | 1 << 38).to_bytes(12, "big")) is None


def test_sscc_reserved_bits_must_be_zero() -> None:
    valid = encode_epc("urn:epc:tag:sscc-96:3.0614141.1234567890")
    assert decode_epc(valid) is not None
    assert decode_epc(valid[:-1] + b"\x01") is None


@pytest.mark.parametrize(
    "epc",
    [
        "E28011606000020A7B4C1D2E",  # a vendor (TID-like) EPC
        "360000000000000000000000",  # SGTIN-198's header in 96 bits
        "2D08075BCD1501E240000000",  # GSRN-96: a valid scheme this module does not decode
        "00" * 12,
        "FF" * 12,
        TDS_SGTIN[:-2],  # 88 bits
        TDS_SGTIN + "0000",  # 112 bits
        "",
        "3074257BF7194E4000001A8",  # odd length
        "0x74257BF7194E4000001A85",  # int() would take it; not hex digits only
        "3074257BF7194E4000001A8G",
        "30 74 25 7B F7 19 4E 40 00 00 1A 85",
        "3074257BF7194E4000001A8\u0665",  # a non-ASCII digit
    ],
)
def test_not_decodable(epc: str) -> None:
    assert decode_epc(epc) is None
    assert epc_uri(epc) is None


def test_accepts_bytes_like_and_any_case() -> None:
    uri = "urn:epc:id:sgtin:0614141.812345.6789"
    raw = bytes.fromhex(TDS_SGTIN)
    assert epc_uri(TDS_SGTIN.lower()) == uri
    assert epc_uri(raw) == uri
    assert epc_uri(bytearray(raw)) == uri
    assert epc_uri(memoryview(raw)) == uri


@pytest.mark.parametrize("junk", [None, 0x30, 3.0, ["30"], object()])
def test_other_types_give_none(junk: object) -> None:
    assert epc_uri(junk) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- properties


@given(st.binary(min_size=0, max_size=32))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    decoded = decode_epc(data)
    assert decoded is None or isinstance(decoded, Epc)
    assert epc_uri(data) == (None if decoded is None else decoded.uri)
    assert epc_uri(data.hex()) == epc_uri(data.hex().upper()) == epc_uri(data)


@given(st.text(max_size=40))
def test_arbitrary_text_never_raises(text: str) -> None:
    assert epc_uri(text) is None or text.isascii()


@given(st.integers(min_value=0x30, max_value=0x35), st.integers(min_value=0, max_value=2**88 - 1))
def test_every_decodable_epc_re_encodes_to_itself(header: int, rest: int) -> None:
    raw = (header << 88 | rest).to_bytes(12, "big")
    decoded = decode_epc(raw)
    assume(decoded is not None)
    assert decoded is not None
    assert encode_epc(decoded.tag_uri) == raw
    if decoded.filter is not None:
        assert encode_epc(decoded.uri, filter=decoded.filter) == raw


def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=n, max_size=n)


def _integer(bits: int) -> st.SearchStrategy[str]:
    return st.integers(min_value=0, max_value=2**bits - 1).map(str)


@st.composite
def pure_uris(draw: st.DrawFn) -> str:
    """A valid pure-identity URI of any of the six schemes, from the TDS field rules."""
    scheme = draw(st.sampled_from([s.removesuffix("-96") for s in SCHEMES]))
    if scheme == "gid":
        return f"urn:epc:id:gid:{draw(_integer(28))}.{draw(_integer(24))}.{draw(_integer(36))}"
    cp_len = draw(st.integers(min_value=6, max_value=12))
    partition = 12 - cp_len
    cp_bits = (40, 37, 34, 30, 27, 24, 20)[partition]
    company = draw(_digits(cp_len))
    if scheme == "sgtin":
        return f"urn:epc:id:sgtin:{company}.{draw(_digits(13 - cp_len))}.{draw(_integer(38))}"
    if scheme == "sscc":
        return f"urn:epc:id:sscc:{company}.{draw(_digits(17 - cp_len))}"
    if scheme == "sgln":
        return f"urn:epc:id:sgln:{company}.{draw(_digits(12 - cp_len))}.{draw(_integer(41))}"
    if scheme == "grai":
        return f"urn:epc:id:grai:{company}.{draw(_digits(12 - cp_len))}.{draw(_integer(38))}"
    return f"urn:epc:id:giai:{company}.{draw(_integer(82 - cp_bits))}"


@given(pure_uris(), st.integers(min_value=0, max_value=7))
def test_encode_decode_round_trip(uri: str, filter_value: int) -> None:
    is_gid = uri.startswith("urn:epc:id:gid:")
    raw = encode_epc(uri, filter=None if is_gid else filter_value)
    assert len(raw) == 12
    assert epc_uri(raw) == uri
    assert epc_uri(raw.hex()) == uri
    decoded = decode_epc(raw)
    assert decoded is not None
    assert decoded.filter == (None if is_gid else filter_value)
    assert encode_epc(decoded.tag_uri) == raw


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("urn:epc:id:sgtin:0614141.812345", "3 components"),
        ("urn:epc:id:sgtin:061414.812345.1", "must be 7 digits"),
        ("urn:epc:id:sgtin:0614141.812345.01", "no leading zeros"),
        ("urn:epc:id:sgtin:0614141.812345.274877906944", "does not fit in 38 bits"),
        ("urn:epc:id:sgtin:06141.8123456.1", "6 to 12 digits"),
        ("urn:epc:id:sgtin:0614141.81234x.1", "must be 6 digits"),
        ("urn:epc:id:sgtin-96:0614141.812345.1", "unsupported EPC scheme"),
        ("urn:epc:tag:sgtin-198:3.0614141.812345.1", "unsupported EPC scheme"),
        ("urn:epc:tag:sgtin-96:8.0614141.812345.1", "filter must be a digit 0-7"),
        ("urn:epc:id:gdti:0614141.12345.1", "unsupported EPC scheme"),
        ("urn:epc:id:gid:268435456.1.1", "does not fit in 28 bits"),
        ("urn:epc:id:giai:0614141.ABC", "decimal number"),
        ("urn:epc:raw:96.x3074257BF7194E4000001A85", "not an EPC URI"),
    ],
)
def test_encode_errors(uri: str, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode_epc(uri)


def test_encode_filter_rules() -> None:
    with pytest.raises(EncodeError, match="carries its own filter"):
        encode_epc("urn:epc:tag:sgtin-96:3.0614141.812345.6789", filter=3)
    with pytest.raises(EncodeError, match="GID-96 has no filter"):
        encode_epc("urn:epc:id:gid:1.2.3", filter=1)
    with pytest.raises(EncodeError, match="0-7"):
        encode_epc("urn:epc:id:sgtin:0614141.812345.6789", filter=8)


# ---------------------------------------------------------------------------------------------- patterns

GRAI = encode_epc("urn:epc:tag:grai-96:3.0614141.12345.400")
SSCC = encode_epc("urn:epc:tag:sscc-96:2.0614141.1234567890")
GID = bytes.fromhex("350007AB70425D4000000586")  # urn:epc:id:gid:31415.271828.1414


@pytest.mark.parametrize(
    ("pattern", "epc", "expected"),
    [
        ("urn:epc:pat:sgtin-96:3.0614141.812345.6789", TDS_SGTIN, True),
        ("urn:epc:pat:sgtin-96:3.0614141.*.*", TDS_SGTIN, True),
        ("urn:epc:pat:sgtin-96:*.*.*.*", TDS_SGTIN, True),
        ("urn:epc:pat:sgtin-96:2.0614141.*.*", TDS_SGTIN, False),  # filter differs
        ("urn:epc:pat:sgtin-96:[2-4].0614141.812345.*", TDS_SGTIN, True),
        ("urn:epc:pat:sgtin-96:3.0614142.*.*", TDS_SGTIN, False),
        ("urn:epc:pat:sgtin-96:3.614141.*.*", TDS_SGTIN, False),  # another partition: another prefix
        ("urn:epc:pat:sgtin-96:3.0614141.812346.*", TDS_SGTIN, False),
        ("urn:epc:pat:sgtin-96:3.0614141.812345.[6000-6789]", TDS_SGTIN, True),
        ("urn:epc:pat:sgtin-96:3.0614141.812345.[6790-9999]", TDS_SGTIN, False),
        ("urn:epc:pat:sgtin-96:*.*.*.6789", TDS_SGTIN, True),
        ("urn:epc:idpat:sgtin:0614141.812345.*", TDS_SGTIN, True),
        ("urn:epc:pat:grai-96:*.*.*.*", TDS_SGTIN, False),  # another scheme
        ("urn:epc:pat:grai-96:3.0614141.12345.*", GRAI, True),
        ("urn:epc:pat:grai-96:3.0614141.12345.400", GRAI, True),
        ("urn:epc:pat:grai-96:3.0614141.12345.401", GRAI, False),
        ("urn:epc:pat:sscc-96:*.0614141.*", SSCC, True),
        ("urn:epc:pat:sscc-96:2.0614141.1234567890", SSCC, True),
        ("urn:epc:idpat:sscc:0614141.1234567891", SSCC, False),
        ("urn:epc:pat:gid-96:31415.*.*", GID, True),
        ("urn:epc:pat:gid-96:31415.271828.[1000-2000]", GID, True),
        ("urn:epc:pat:gid-96:31416.*.*", GID, False),
        ("urn:epc:pat:sgtin-96:3.0614141.*.*", "E28011606000020A7B4C1D2E", False),
        ("urn:epc:pat:sgtin-96:3.0614141.*.*", "not hex", False),
    ],
)
def test_pattern_matching(pattern: str, epc: bytes | str, expected: bool) -> None:
    matcher = parse_pattern(pattern)
    assert matcher.matches(epc) is expected
    if isinstance(epc, bytes):
        assert matcher.matches(epc.hex()) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("urn:epc:pat:sgtin-96:3.*.812345.*", "ItemRef must be '\\*' too"),
        ("urn:epc:pat:sgtin-96:3.0614141.*", "4 components"),
        ("urn:epc:pat:sgtin-96:9.0614141.*.*", "does not fit in 3 bits"),
        ("urn:epc:pat:sgtin-96:3.0614141.81234.*", "must be 6 digits or '\\*'"),
        ("urn:epc:pat:sgtin-96:3.0614141.*.[9-1]", "is empty"),
        ("urn:epc:pat:sgtin-96:3.0614141.*.007", "no leading zeros"),
        ("urn:epc:pat:sgtin-96:3.06141X1.*.*", "6 to 12 digits"),
        ("urn:epc:pat:sgtin-198:3.0614141.*.*", "unsupported scheme 'sgtin-198'"),
        ("urn:epc:idpat:sgtin-96:0614141.*.*", "unsupported scheme"),
        ("urn:epc:pat:gid-96:*.1.*", "every later component must be"),
        ("urn:epc:id:sgtin:0614141.812345.6789", "not an EPC pattern URI"),
        ("3008", "not an EPC pattern URI"),
    ],
)
def test_pattern_errors(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pattern(pattern)


@given(pure_uris(), st.integers(min_value=0, max_value=7), st.data())
def test_patterns_built_from_an_epc_match_it(uri: str, filter_value: int, data: st.DataObject) -> None:
    is_gid = uri.startswith("urn:epc:id:gid:")
    raw = encode_epc(uri, filter=None if is_gid else filter_value)
    decoded = decode_epc(raw)
    assert decoded is not None
    scheme = decoded.scheme
    components = list(decoded.components)
    # Wildcard a suffix of the identity's components (the TDS grammar's shape), and maybe the filter.
    keep = data.draw(st.integers(min_value=0, max_value=len(components)))
    pattern_components = components[:keep] + ["*"] * (len(components) - keep)
    if not is_gid:
        head = data.draw(st.sampled_from([str(filter_value), "*", f"[0-{filter_value}]"]))
        pattern_components.insert(0, head)
    pattern = parse_pattern(f"urn:epc:pat:{scheme}:{'.'.join(pattern_components)}")
    assert pattern.matches(raw)
    assert pattern.matches(raw.hex().upper())
    other_filter = (filter_value + 1) % 8
    if not is_gid and pattern_components[0] == str(filter_value):
        other = encode_epc(uri, filter=other_filter)
        assert not pattern.matches(other)
