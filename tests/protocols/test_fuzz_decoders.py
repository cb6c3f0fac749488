"""Every decoder of ``protocols/`` (the table in ``fuzz_targets.py``) on bad input, with hypothesis:
arbitrary bytes, and its valid inputs mutated as lines and devices damage them (``mutations.py``). A decoder
returns or raises :class:`~protocols.errors.DecodeError` (a reason); any other exception is a crash. The
framers have the same checks in the shared framer suite (``framer_suite.py``); ``bench/fuzz.py`` runs all
of it for longer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import fuzz_targets, mutations
from .fuzz_targets import TARGETS, Target

# One test function, a different decoder per parameter: a different executor each time, on purpose.
fuzz_settings = settings(suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])


def decodes_or_says_why(target: Target, raw: bytes) -> None:
    try:
        target.decode(raw)
    except target.errors as err:
        assert str(err), f"{target.id}: {type(err).__name__} without a reason"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_the_seeds_are_valid(target: Target) -> None:
    seeds = target.seeds()
    assert seeds, target.id
    for raw in seeds:
        target.decode(raw)  # a valid input decodes: the mutations below start from real messages


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
@fuzz_settings
@given(raw=st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_decode_error(target: Target, raw: bytes) -> None:
    decodes_or_says_why(target, raw)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
@fuzz_settings
@given(data=st.data(), edits=mutations.mutations())
def test_mutated_valid_input_decodes_or_raises_decode_error(
    target: Target, data: st.DataObject, edits: list[mutations.Mutation]
) -> None:
    seed = data.draw(st.sampled_from(target.seeds()), label="seed")
    decodes_or_says_why(target, mutations.apply_all(seed, edits))


def test_every_protocol_module_is_fuzzed() -> None:
    """A new codec in protocols/ is added to the table (or to the framers), not forgotten."""
    modules = {path.stem for path in fuzz_targets.ROOT.joinpath("protocols").iterdir()}
    modules |= {"llrp"}  # a package
    modules -= {"__init__", "errors", "framing", "py", "llrp"} | {"__pycache__"}
    covered = set(fuzz_targets.protocols())
    assert "llrp" in covered
    assert sorted(modules - covered) == []


def test_a_mutation_changes_its_input_and_says_what_it_did() -> None:
    raw = bytes(range(10))
    cases = {
        "flip": (mutations.Mutation("flip", at=3, bit=7), bytes([0, 1, 2, 0x83, 4, 5, 6, 7, 8, 9])),
        "truncate": (mutations.Mutation("truncate", at=4), raw[:4]),
        "drop_head": (mutations.Mutation("drop_head", at=8), raw[8:]),
        "insert": (mutations.Mutation("insert", at=2, payload=b"\xaa"), raw[:2] + b"\xaa" + raw[2:]),
        "duplicate": (mutations.Mutation("duplicate", at=1, span=1), raw[:3] + raw[1:3] + raw[3:]),
        "delete": (mutations.Mutation("delete", at=5, span=2), raw[:5] + raw[8:]),
        "replace": (mutations.Mutation("replace", at=0, payload=b"\x7e"), b"\x7e" + raw[1:]),
    }
    assert sorted(cases) == sorted(mutations.KINDS)
    for kind, (edit, expected) in cases.items():
        assert edit.apply(raw) == expected, kind
        assert str(edit).startswith(kind)
    assert mutations.from_ints(len(mutations.KINDS) + 1, 1, 0, 0, b"").kind == mutations.KINDS[1]
