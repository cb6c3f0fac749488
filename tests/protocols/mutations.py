"""How a line, a buggy device or a hostile sender damages a valid message: one set of edits for every codec.

A :class:`Mutation` is a small, printable edit of a byte string (a bit flipped, the end cut off, bytes
inserted, a piece of the message repeated, a piece removed, a byte replaced). Positions are stored as plain
integers and taken modulo the length of the bytes they are applied to, so one mutation applies to any input
and shrinks well under hypothesis.

Three ways to draw them, one meaning:

- :func:`mutations` and :func:`mutated`: hypothesis strategies (the CI tests: ``tests/protocols``);
- :func:`from_ints`: a mutation from integers a fuzzer supplies (``bench.fuzz`` under atheris, where
  libFuzzer's own input chooses the edits, so its coverage guidance steers them).

Used by the shared framer suite (``framer_suite.py``), the decoder table (``fuzz_targets.py``) and the
long-running harness (``bench/fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

__all__ = ["KINDS", "Mutation", "apply_all", "from_ints", "mutated", "mutations"]

KINDS = ("flip", "truncate", "drop_head", "insert", "duplicate", "delete", "replace")
"""Every kind of edit, in the order :func:`from_ints` numbers them."""


@dataclass(frozen=True, slots=True)
class Mutation:
    """One edit. ``at`` and ``span`` are reduced modulo the input's length when applied; ``bit`` modulo 8;
    ``payload`` is what ``insert`` puts in and ``replace`` writes (its first byte)."""

    kind: str
    at: int = 0
    span: int = 1
    bit: int = 0
    payload: bytes = b""

    def apply(self, raw: bytes) -> bytes:
        size = len(raw)
        if self.kind == "insert":
            at = self.at % (size + 1)
            return raw[:at] + (self.payload or b"\x00") + raw[at:]
        if not size:
            return raw
        at = self.at % size
        span = 1 + self.span % size
        if self.kind == "flip":
            return raw[:at] + bytes((raw[at] ^ (1 << (self.bit % 8)),)) + raw[at + 1 :]
        if self.kind == "truncate":  # the end is lost (a line cut, a read that timed out)
            return raw[:at]
        if self.kind == "drop_head":  # the start is lost (the listener joined in the middle)
            return raw[at:]
        if self.kind == "duplicate":  # a piece of the message repeated right after itself (an echo, a retry)
            return raw[: at + span] + raw[at : at + span] + raw[at + span :]
        if self.kind == "delete":  # bytes lost in the middle (an overrun UART)
            return raw[:at] + raw[at + span :]
        if self.kind == "replace":
            value = self.payload[0] if self.payload else (raw[at] + 1) & 0xFF
            return raw[:at] + bytes((value,)) + raw[at + 1 :]
        raise ValueError(f"unknown mutation {self.kind!r}")

    def __str__(self) -> str:
        extra = f" {self.payload.hex()}" if self.payload else ""
        return f"{self.kind}@{self.at}+{self.span}/{self.bit}{extra}"


def apply_all(raw: bytes, edits: Sequence[Mutation]) -> bytes:
    """``raw`` with every edit applied in turn."""
    for edit in edits:
        raw = edit.apply(raw)
    return raw


def mutation() -> st.SearchStrategy[Mutation]:
    """One edit of any kind."""
    return st.builds(
        Mutation,
        kind=st.sampled_from(KINDS),
        at=st.integers(0, 1 << 16),
        span=st.integers(0, 64),
        bit=st.integers(0, 7),
        payload=st.binary(min_size=0, max_size=12),
    )


def mutations(max_size: int = 4) -> st.SearchStrategy[list[Mutation]]:
    """One to ``max_size`` edits (most damage in the field is one or two)."""
    return st.lists(mutation(), min_size=1, max_size=max_size)


def mutated(valid: st.SearchStrategy[bytes], max_size: int = 4) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(a valid input, that input mutated) with the valid one drawn from ``valid``."""
    return st.tuples(valid, mutations(max_size)).map(lambda pair: (pair[0], apply_all(pair[0], pair[1])))


def from_ints(kind: int, at: int, span: int, bit: int, payload: bytes) -> Mutation:
    """An edit from a fuzzer's integers (``kind`` modulo the number of kinds)."""
    return Mutation(KINDS[kind % len(KINDS)], at, span, bit, payload)
