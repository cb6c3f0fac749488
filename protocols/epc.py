"""EPC Tag Data Standard (GS1 EPC TDS): the 96-bit binary encodings into pure-identity URIs, and EPC pattern
URIs into matchers.

An RFID read carries the tag's EPC as bits; people and back offices name the same thing by its GS1 key
(``urn:epc:id:sgtin:0614141.812345.6789``: company prefix, item reference, serial). This module turns the
first into the second for the six 96-bit schemes roadside, port and substation tags use:

=========  ======  =====================================  ==============================================
scheme     header  pure-identity URI                      bits after header, filter (3), partition (3)
=========  ======  =====================================  ==============================================
SGTIN-96   0x30    urn:epc:id:sgtin:C.I.S                 C+I 44 (partition table), serial 38
SSCC-96    0x31    urn:epc:id:sscc:C.S                    C+S 58 (partition table), 24 reserved (zero)
SGLN-96    0x32    urn:epc:id:sgln:C.L.E                  C+L 41 (partition table), extension 41
GRAI-96    0x33    urn:epc:id:grai:C.A.S                  C+A 44 (partition table), serial 38
GIAI-96    0x34    urn:epc:id:giai:C.I                    C+I 82 (unpadded partition table)
GID-96     0x35    urn:epc:id:gid:M.C.S                   no filter or partition: manager 28, class 24,
                                                          serial 36
=========  ======  =====================================  ==============================================

The partition value P (0-6) splits the company prefix C from the next field: C takes 40, 37, 34, 30, 27, 24
or 20 bits and 12, 11, 10, 9, 8, 7 or 6 decimal digits; the next field takes the rest of the bits and of the
scheme's digits (13 for SGTIN, item reference with its indicator digit; 17 for SSCC; 12 for SGLN and GRAI),
zero-padded to that many digits, possibly none (a GRAI with a 12-digit prefix has an empty asset type:
``urn:epc:id:grai:012345678901..5``). GIAI's asset reference is unpadded. Serials, SGLN extensions and every
GID field are plain decimal integers. Following the TDS decoding procedures, an EPC whose partition is 7,
whose padded fields hold values with more digits than the partition allows, or whose reserved SSCC bits are
not zero is not a valid encoding and has no URI; neither has an EPC of another length or header (GS1 keys
in other encodings, ISO 17363 container tags, vendor EPCs).

The decoder is integer shifts rather than construct: field widths depend on the partition value, and this
runs for every read. :func:`decode_epc` (and :func:`epc_uri` over it) is memoised on its argument (the last
65,536 distinct EPCs as bytes and as many as text), so a tag read thousands of times costs one dictionary
lookup. :func:`encode_epc` goes the other way, from a tag or pure-identity URI, for simulators and tests.

Patterns (TDS "EPC Pattern URI", and the ALE ``[lo-hi]`` range for integer fields)::

    urn:epc:pat:sgtin-96:3.0614141.812345.*      filter 3, that company prefix and item, any serial
    urn:epc:pat:sgtin-96:*.0614141.*.*           any filter, any item of that company
    urn:epc:pat:grai-96:*.0614141.12345.[1-999]  a range of serials
    urn:epc:idpat:sscc:0614141.*                 pure-identity pattern: no filter component
    urn:epc:pat:gid-96:31415.*.*                 GID has no filter; a '*' makes every later field '*'

In the GS1 schemes the field after the company prefix is ``*`` whenever the prefix is (TDS grammar).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from protocols.errors import EncodeError

__all__ = [
    "SCHEMES",
    "Epc",
    "EpcInput",
    "EpcPattern",
    "decode_epc",
    "encode_epc",
    "epc_uri",
    "parse_pattern",
]

EPC_BITS: Final = 96
_EPC_BYTES: Final = 12
_BODY_BITS: Final = 82
"""Bits after the header (8), the filter (3) and the partition (3)."""
_CP_BITS: Final = (40, 37, 34, 30, 27, 24, 20)
"""Company prefix bits by partition value 0-6 (the same in every GS1 scheme here)."""
_CP_DIGITS: Final = (12, 11, 10, 9, 8, 7, 6)
"""Company prefix digits by partition value."""
_POW10: Final = tuple(10**n for n in range(26))
_CACHE_SIZE: Final = 65536
"""Distinct EPCs whose decoding is remembered (each costs a few hundred bytes)."""

_TailKind = Literal["integer", "reserved", "none"]
EpcInput = bytes | bytearray | memoryview | str
"""An EPC as bytes, or as hex text in any case."""


@dataclass(frozen=True, slots=True)
class _Gs1Scheme:
    """A GS1 scheme whose company prefix and next field share a partitioned bit range."""

    name: str
    """Pure-identity name: ``sgtin``; the binary scheme is ``<name>-96``."""
    header: int
    key_bits: int
    """Bits of company prefix + next field."""
    key_digits: int | None
    """Digits of company prefix + next field; None when the next field is unpadded (GIAI)."""
    tail: _TailKind
    """What follows the key: an integer (serial, extension), reserved zero bits, or nothing."""
    fields: tuple[str, ...]
    """The URI components, for messages."""

    @property
    def tail_bits(self) -> int:
        return _BODY_BITS - self.key_bits

    def ref_bits(self, partition: int) -> int:
        return self.key_bits - _CP_BITS[partition]

    def ref_digits(self, partition: int) -> int:
        """Digits of the field after the company prefix (the most, for an unpadded field)."""
        total = self.key_digits if self.key_digits is not None else 25  # GIAI: 12 + 13 ... 6 + 19
        return total - _CP_DIGITS[partition]


_SGTIN: Final = _Gs1Scheme("sgtin", 0x30, 44, 13, "integer", ("Filter", "CompanyPrefix", "ItemRef", "Serial"))
_SSCC: Final = _Gs1Scheme("sscc", 0x31, 58, 17, "reserved", ("Filter", "CompanyPrefix", "SerialRef"))
_SGLN: Final = _Gs1Scheme(
    "sgln", 0x32, 41, 12, "integer", ("Filter", "CompanyPrefix", "LocationRef", "Extension")
)
_GRAI: Final = _Gs1Scheme("grai", 0x33, 44, 12, "integer", ("Filter", "CompanyPrefix", "AssetType", "Serial"))
_GIAI: Final = _Gs1Scheme("giai", 0x34, 82, None, "none", ("Filter", "CompanyPrefix", "AssetRef"))
_GS1: Final = {s.header: s for s in (_SGTIN, _SSCC, _SGLN, _GRAI, _GIAI)}
_GS1_BY_NAME: Final = {s.name: s for s in _GS1.values()}

_GID_HEADER: Final = 0x35
_GID_BITS: Final = (28, 24, 36)
"""General manager number, object class, serial."""
_GID_FIELDS: Final = ("Manager", "ObjectClass", "Serial")

SCHEMES: Final = ("sgtin-96", "sscc-96", "sgln-96", "grai-96", "giai-96", "gid-96")
"""The binary schemes this module decodes."""


class Epc(NamedTuple):
    """A decoded 96-bit EPC. (A named tuple: one is made per distinct EPC, on the read path.)"""

    scheme: str
    """The binary scheme: ``sgtin-96``, ``sscc-96``, ``sgln-96``, ``grai-96``, ``giai-96``, ``gid-96``."""
    filter: int | None
    """The filter value (0-7; what kind of object carries the tag); None for GID-96, which has none."""
    components: tuple[str, ...]
    """The pure identity's components as they appear in its URI (zero-padded where the TDS pads)."""
    uri: str
    """Pure-identity URI: ``urn:epc:id:sgtin:0614141.812345.6789``."""
    tag_uri: str
    """Tag URI, which keeps the filter and the binary scheme:
    ``urn:epc:tag:sgtin-96:3.0614141.812345.6789``."""


class _Plan(NamedTuple):
    """How to decode one (scheme, partition): the partition table's row with its masks precomputed."""

    scheme: str
    tail_bits: int
    tail_mask: int
    key_mask: int
    ref_bits: int
    ref_mask: int
    cp_digits: int
    cp_limit: int
    ref_digits: int
    """Zero-padding of the field after the company prefix; -1 when it is unpadded (GIAI)."""
    ref_limit: int
    tail: _TailKind
    uri_prefix: str
    tag_prefix: str


def _plans() -> dict[int, _Plan]:
    plans = {}
    for scheme in _GS1.values():
        name = f"{scheme.name}-96"
        for partition in range(7):
            ref_bits = scheme.ref_bits(partition)
            ref_digits = scheme.ref_digits(partition)
            plans[scheme.header << 3 | partition] = _Plan(
                scheme=name,
                tail_bits=scheme.tail_bits,
                tail_mask=(1 << scheme.tail_bits) - 1,
                key_mask=(1 << scheme.key_bits) - 1,
                ref_bits=ref_bits,
                ref_mask=(1 << ref_bits) - 1,
                cp_digits=_CP_DIGITS[partition],
                cp_limit=_POW10[_CP_DIGITS[partition]],
                ref_digits=-1 if scheme.key_digits is None else ref_digits,
                ref_limit=_POW10[ref_digits],
                tail=scheme.tail,
                uri_prefix=f"urn:epc:id:{scheme.name}:",
                tag_prefix=f"urn:epc:tag:{name}:",
            )
    return plans


_PLANS: Final = _plans()
"""By header << 3 | partition; partition 7 has no plan."""


def _decode_int(value: int) -> Epc | None:
    """Decode a 96-bit EPC held in an int; None when it is not a valid encoding of a supported scheme."""
    top = value >> 82  # header (8), filter (3), partition (3)
    plan = _PLANS.get((top >> 3 & 0x7F8) | (top & 7))
    if plan is None:
        if top >> 6 != _GID_HEADER:
            return None
        body = f"{(value >> 60) & 0xFFFFFFF}.{(value >> 36) & 0xFFFFFF}.{value & 0xFFFFFFFFF}"
        return Epc(
            "gid-96", None, tuple(body.split(".")), "urn:epc:id:gid:" + body, "urn:epc:tag:gid-96:" + body
        )
    tail = value & plan.tail_mask
    key = (value >> plan.tail_bits) & plan.key_mask
    company = key >> plan.ref_bits
    ref = key & plan.ref_mask
    if company >= plan.cp_limit or ref >= plan.ref_limit:
        return None
    cp_text = str(company).zfill(plan.cp_digits)
    ref_text = str(ref).zfill(plan.ref_digits) if plan.ref_digits else ""  # zfill(-1): unpadded
    if plan.tail == "integer":
        components: tuple[str, ...] = (cp_text, ref_text, str(tail))
    elif plan.tail == "reserved" and tail:
        return None
    else:
        components = (cp_text, ref_text)
    body = ".".join(components)
    filter_value = top >> 3 & 7
    return Epc(
        plan.scheme,
        filter_value,
        components,
        plan.uri_prefix + body,
        f"{plan.tag_prefix}{filter_value}.{body}",
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _decode_bytes(data: bytes) -> Epc | None:
    if len(data) != _EPC_BYTES:
        return None
    return _decode_int(int.from_bytes(data, "big"))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _decode_hex(text: str) -> Epc | None:
    if len(text) != 2 * _EPC_BYTES:
        return None
    try:
        data = bytes.fromhex(text)
    except ValueError:
        return None
    if len(data) != _EPC_BYTES:  # fromhex skips spaces: 24 characters that give 12 bytes are 24 digits
        return None
    return _decode_int(int.from_bytes(data, "big"))


def decode_epc(epc: EpcInput) -> Epc | None:
    """Decode an EPC (bytes, or hex text in any case); None for anything that is not a valid 96-bit
    encoding of a supported scheme. Never raises, whatever it is given."""
    try:
        if isinstance(epc, str):
            return _decode_hex(epc)
        if isinstance(epc, bytes):
            return _decode_bytes(epc)
        if isinstance(epc, bytearray | memoryview):
            return _decode_bytes(bytes(epc))
    except Exception:  # the contract is "never raises": a bad input is no URI, never a crash
        return None
    return None


def epc_uri(epc: EpcInput) -> str | None:
    """The pure-identity URI of an EPC (bytes, or hex text in any case), or None when it has none. Never
    raises. Memoised: cheap enough to call for every read."""
    decoded = decode_epc(epc)
    return None if decoded is None else decoded.uri


# --------------------------------------------------------------------------------------------------------
# Encoding (the simulators write tags with it; the tests round-trip through it)

_DIGITS = re.compile(r"[0-9]*")
_URI = re.compile(r"urn:epc:(id|tag):([a-z0-9-]+):(.*)", re.DOTALL)


def _integer(text: str, bits: int, what: str) -> int:
    """A decimal integer field: digits, no leading zero (except '0' itself), fitting in ``bits``."""
    if not text or not _DIGITS.fullmatch(text):
        raise EncodeError(f"{what} must be a decimal number, got {text!r}")
    if len(text) > 1 and text[0] == "0":
        raise EncodeError(f"{what} must have no leading zeros in a 96-bit EPC, got {text!r}")
    value = int(text)
    if value >= 1 << bits:
        raise EncodeError(f"{what} {value} does not fit in {bits} bits (at most {(1 << bits) - 1})")
    return value


def encode_epc(uri: str, *, filter: int | None = None) -> bytes:
    """The 12 bytes of a 96-bit EPC from its tag URI (``urn:epc:tag:sgtin-96:3.0614141.812345.6789``, which
    holds the filter) or its pure-identity URI (``urn:epc:id:sgtin:0614141.812345.6789``, with ``filter``,
    default 0). Raises :class:`~protocols.errors.EncodeError` saying what is wrong."""
    match = _URI.fullmatch(uri) if isinstance(uri, str) else None
    if match is None:
        raise EncodeError(f"not an EPC URI (urn:epc:id:... or urn:epc:tag:...): {uri!r}")
    kind, scheme_name, body = match.groups()
    parts = body.split(".")
    if kind == "tag":
        if not scheme_name.endswith("-96") or scheme_name not in SCHEMES:
            raise EncodeError(f"unsupported EPC scheme {scheme_name!r}: supported are {', '.join(SCHEMES)}")
        if filter is not None:
            raise EncodeError("a tag URI carries its own filter value: do not pass filter=")
        base = scheme_name.removesuffix("-96")
        if base != "gid":
            if not parts or not re.fullmatch(r"[0-7]", parts[0]):
                raise EncodeError(f"{uri!r}: the filter must be a digit 0-7, got {parts[0]!r}")
            filter, parts = int(parts[0]), parts[1:]
    else:
        base = scheme_name
        if base + "-96" not in SCHEMES:
            raise EncodeError(f"unsupported EPC scheme {base!r}: supported are {', '.join(SCHEMES)}")
        if base == "gid" and filter is not None:
            raise EncodeError("GID-96 has no filter value")
        if filter is None:
            filter = 0
    if base == "gid":
        if len(parts) != 3:
            raise EncodeError(f"{uri!r}: a GID has 3 components (Manager.ObjectClass.Serial)")
        value = _GID_HEADER
        for text, bits, name in zip(parts, _GID_BITS, _GID_FIELDS, strict=True):
            value = (value << bits) | _integer(text, bits, name)
        return value.to_bytes(_EPC_BYTES, "big")
    assert filter is not None
    if not 0 <= filter <= 7:
        raise EncodeError(f"the filter value must be 0-7, got {filter}")
    scheme = _GS1_BY_NAME[base]
    fields = scheme.fields[1:]
    if len(parts) != len(fields):
        raise EncodeError(f"{uri!r}: a {base.upper()} has {len(fields)} components ({'.'.join(fields)})")
    company = parts[0]
    if not (6 <= len(company) <= 12 and _DIGITS.fullmatch(company)):
        raise EncodeError(f"the company prefix must be 6 to 12 digits, got {company!r}")
    partition = _CP_DIGITS.index(len(company))
    ref_bits = scheme.ref_bits(partition)
    ref_text = parts[1]
    if scheme.key_digits is None:
        ref = _integer(ref_text, ref_bits, f"{fields[1]} (with a {len(company)}-digit company prefix)")
    else:
        want = scheme.ref_digits(partition)
        if len(ref_text) != want or not _DIGITS.fullmatch(ref_text):
            raise EncodeError(
                f"with a {len(company)}-digit company prefix the {fields[1]} must be {want} digits, "
                f"got {ref_text!r}"
            )
        ref = int(ref_text) if ref_text else 0
    value = (scheme.header << 3 | filter) << 3 | partition
    value = (value << _CP_BITS[partition] | int(company)) << ref_bits | ref
    if scheme.tail == "integer":
        value = value << scheme.tail_bits | _integer(parts[2], scheme.tail_bits, fields[2])
    elif scheme.tail == "reserved":
        value <<= scheme.tail_bits
    return value.to_bytes(_EPC_BYTES, "big")


# --------------------------------------------------------------------------------------------------------
# Patterns

_Constraint = str | tuple[int, int] | None
"""Per URI component: None (``*``), the exact text (padded fields), or an inclusive integer range."""

_RANGE = re.compile(r"\[([0-9]+)-([0-9]+)\]")


class EpcPattern:
    """A parsed EPC pattern URI (:func:`parse_pattern`): :meth:`matches` tells whether an EPC falls in it."""

    __slots__ = ("_components", "_filter", "_scheme", "uri")

    def __init__(
        self, uri: str, scheme: str, filter_range: tuple[int, int] | None, components: tuple[_Constraint, ...]
    ) -> None:
        self.uri = uri
        self._scheme = scheme
        self._filter = filter_range
        self._components = components

    def __repr__(self) -> str:
        return f"EpcPattern({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EpcPattern) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def matches(self, epc: EpcInput) -> bool:
        """True when ``epc`` (bytes, or hex text) decodes in this pattern's scheme and every component is
        within it. Never raises."""
        decoded = decode_epc(epc)
        if decoded is None or decoded.scheme != self._scheme:
            return False
        if self._filter is not None:
            low, high = self._filter
            if decoded.filter is None or not low <= decoded.filter <= high:
                return False
        for want, have in zip(self._components, decoded.components, strict=True):
            if want is None:
                continue
            if isinstance(want, str):
                if have != want:
                    return False
            elif not want[0] <= int(have) <= want[1]:
                return False
        return True


def _pattern_integer(uri: str, text: str, bits: int, what: str) -> tuple[int, int] | None:
    if text == "*":
        return None
    ranged = _RANGE.fullmatch(text)
    try:
        if ranged is None:
            value = _integer(text, bits, what)
            return value, value
        low = _integer(ranged.group(1), bits, f"{what} range start")
        high = _integer(ranged.group(2), bits, f"{what} range end")
    except EncodeError as err:
        raise ValueError(f"{uri!r}: {err}") from None
    if low > high:
        raise ValueError(f"{uri!r}: the {what} range {text} is empty (start > end)")
    return low, high


def parse_pattern(uri: str) -> EpcPattern:
    """Parse an EPC pattern URI (``urn:epc:pat:<scheme>-96:...`` or ``urn:epc:idpat:<scheme>:...``, see the
    module's docstring). Raises ``ValueError`` saying what is wrong."""
    if not isinstance(uri, str):
        raise ValueError(f"an EPC pattern URI is text, got {type(uri).__name__}")
    match = re.fullmatch(r"urn:epc:(pat|idpat):([a-z0-9-]+):(.*)", uri, re.DOTALL)
    if match is None:
        raise ValueError(
            f"{uri!r} is not an EPC pattern URI (urn:epc:pat:sgtin-96:Filter.CompanyPrefix.ItemRef.Serial, "
            "with '*' for any value)"
        )
    kind, scheme_name, body = match.groups()
    if kind == "pat":
        supported: tuple[str, ...] = SCHEMES
        base = scheme_name.removesuffix("-96") if scheme_name in SCHEMES else None
    else:
        supported = tuple(s.removesuffix("-96") for s in SCHEMES)
        base = scheme_name if scheme_name in supported else None
    if base is None:
        raise ValueError(
            f"{uri!r}: unsupported scheme {scheme_name!r} in a {kind} URI (supported: {', '.join(supported)})"
        )
    parts = body.split(".")
    filter_range: tuple[int, int] | None = None
    if base == "gid":
        fields: tuple[str, ...] = _GID_FIELDS
    else:
        scheme = _GS1_BY_NAME[base]
        fields = scheme.fields if kind == "pat" else scheme.fields[1:]
    if len(parts) != len(fields):
        raise ValueError(
            f"{uri!r}: a {scheme_name} pattern has {len(fields)} components ({'.'.join(fields)}), "
            f"got {len(parts)}"
        )
    if kind == "pat" and base != "gid":
        filter_range = _pattern_integer(uri, parts[0], 3, "filter")
        parts = parts[1:]
        fields = fields[1:]
    constraints: list[_Constraint] = []
    if base == "gid":
        wildcard = False
        for text, bits, name in zip(parts, _GID_BITS, fields, strict=True):
            if wildcard and text != "*":
                raise ValueError(
                    f"{uri!r}: after a '*' every later component must be '*' too ({name} is {text!r})"
                )
            constraint = _pattern_integer(uri, text, bits, name)
            wildcard = text == "*"
            constraints.append(constraint)
        return EpcPattern(uri, "gid-96", None, tuple(constraints))
    scheme = _GS1_BY_NAME[base]
    company, ref_text = parts[0], parts[1]
    if company == "*":
        if ref_text != "*":
            raise ValueError(f"{uri!r}: with any company prefix ('*') the {fields[1]} must be '*' too")
        constraints += [None, None]
        partition = None
    else:
        if not (6 <= len(company) <= 12 and _DIGITS.fullmatch(company)):
            raise ValueError(f"{uri!r}: the company prefix must be 6 to 12 digits or '*', got {company!r}")
        partition = _CP_DIGITS.index(len(company))
        constraints.append(company)
        if ref_text == "*":
            constraints.append(None)
        elif scheme.key_digits is None:
            constraints.append(_pattern_integer(uri, ref_text, scheme.ref_bits(partition), fields[1]))
        else:
            want = scheme.ref_digits(partition)
            if len(ref_text) != want or not _DIGITS.fullmatch(ref_text):
                raise ValueError(
                    f"{uri!r}: with a {len(company)}-digit company prefix the {fields[1]} must be "
                    f"{want} digits or '*', got {ref_text!r}"
                )
            constraints.append(ref_text)
    if scheme.tail == "integer":
        constraints.append(_pattern_integer(uri, parts[2], scheme.tail_bits, fields[2]))
    return EpcPattern(uri, f"{base}-96", filter_range, tuple(constraints))
