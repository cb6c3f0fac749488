"""Long-running fuzzing of every decoder and framer of ``protocols/``, per protocol.

    python -m bench.fuzz [--protocol NAME] [--seconds 60] [--engine atheris|hypothesis]
                         [--crash-dir DIR] [--list]

What runs is what CI runs for a moment (``tests/protocols``), for as long as asked:

- every decoder of the protocol (the table ``tests/protocols/fuzz_targets.py``) on arbitrary bytes and on
  valid inputs mutated by the shared edits of ``tests/protocols/mutations.py`` (bits flipped, cut short,
  start lost, bytes inserted, pieces repeated or removed): only the codec's own error may escape;
- its framer (its class of the shared framer suite, ``tests/protocols/framer_suite.py``): a valid frame,
  mutated or replaced by arbitrary bytes, then a valid frame, fed in two chunks cut anywhere: nothing raises,
  every byte is accounted for, and (unless the damage made a frame that could hide it, the suite's
  ``accidental``) the valid frame after the damage is found: a *resynchronisation check*. LLRP frames by
  length alone and cannot resynchronise: there the check is that a new connection's framer finds the frame.

Engines. ``atheris`` (coverage-guided libFuzzer, the default when it is installed: a development tool, not a
dependency of edgegw): each protocol runs in a child process (libFuzzer owns its process and exits at the end
of ``-max_total_time``) with the ``protocols`` package instrumented; the fuzzer's input chooses the mode, the
decoder, the seed, the edits and the cut. ``hypothesis`` (when atheris is missing, or asked for): batches of
hypothesis examples drawn from the same strategies, until the time is up.

A crash (any other exception, or a failed resynchronisation check) is counted, its input written to
``--crash-dir`` (``<protocol>-<sha1>.bin`` with a ``.txt`` saying what it is) and the run goes on.
Printed per protocol: executions, executions/s, decoder and framer runs, resynchronisation checks (and how
many were skipped because the damage made a hiding frame), crashes. The exit status is 1 if any crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


@dataclass(slots=True)
class Tally:
    """What one protocol's run did."""

    protocol: str
    engine: str = ""
    seconds: float = 0.0
    executions: int = 0
    decoder_runs: int = 0
    framer_runs: int = 0
    resync_checks: int = 0
    resync_skipped: int = 0
    """Damage that made a valid frame able to hide the next one (the suite's ``accidental``): not checked."""
    crashes: int = 0
    crash_files: tuple[str, ...] = ()


class Fuzzer:
    """One protocol's decoders and framer, and the checks run on one input (shared by both engines)."""

    def __init__(self, protocol: str, crash_dir: Path, engine: str) -> None:
        from tests.protocols import fuzz_targets  # noqa: PLC0415  # after atheris' import hook, if any

        self.protocol = protocol
        self.targets = list(fuzz_targets.targets_of(protocol))
        self.seeds = [target.seeds() for target in self.targets]
        self.suite: Any = None
        self.frames: list[Any] = []
        if protocol in fuzz_targets.FRAMER_SUITES:
            module, name = fuzz_targets.FRAMER_SUITES[protocol]
            self.suite = getattr(importlib.import_module(module), name)()
            self.frames = examples(self.suite.frames, 200)
        if not self.targets and self.suite is None:
            raise SystemExit(f"no decoder or framer for {protocol!r}: {', '.join(fuzz_targets.protocols())}")
        self.crash_dir = crash_dir
        self.tally = Tally(protocol, engine)
        self._crash_names: list[str] = []

    # -- the checks ------------------------------------------------------------------------------------------
    def decoder(self, index: int, raw: bytes) -> None:
        target = self.targets[index % len(self.targets)]
        self.tally.decoder_runs += 1
        try:
            target.decode(raw)
        except target.errors:
            pass
        except Exception:  # anything else is the crash this harness looks for
            self.crash(raw, f"decoder {target.id}\n{traceback.format_exc()}")

    def framer(self, damaged: bytes, good_index: int, cut: int) -> None:
        from tests.protocols.framer_suite import split  # noqa: PLC0415

        suite = self.suite
        second = self.frames[good_index % len(self.frames)]
        good = suite.encode(second)
        self.tally.framer_runs += 1
        try:
            framer = suite.framer()
            if suite.resynchronises:
                stream = damaged + good + suite.flush
                found = suite.feed(framer, split(stream, [cut]))
                suite.check_accounting(framer, found, len(stream))
                assert framer.pending <= suite.pending_after_flush, "held back after the flush"
                if suite.accidental(stream, [(len(damaged), len(damaged) + len(good))]):
                    self.tally.resync_skipped += 1
                else:
                    self.tally.resync_checks += 1
                    assert found[-1:] == [second], "the frame after the damage was not found"
            else:
                found = suite.feed(framer, split(damaged + good, [cut]))
                suite.check_accounting(framer, found, len(damaged) + len(good))
                self.tally.resync_checks += 1
                assert suite.framer().feed(good) == [second], "a new connection's framer missed the frame"
        except Exception:
            self.crash(damaged + good, f"framer {self.protocol} (damage: {len(damaged)} bytes, cut {cut})\n"
                       f"{traceback.format_exc()}")  # fmt: skip

    def crash(self, raw: bytes, what: str) -> None:
        self.tally.crashes += 1
        name = f"{self.protocol}-{hashlib.sha1(raw).hexdigest()[:16]}"  # a file name, not security
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        (self.crash_dir / f"{name}.bin").write_bytes(raw)
        (self.crash_dir / f"{name}.txt").write_text(what)
        if name not in self._crash_names and len(self._crash_names) < 20:
            self._crash_names.append(name)
            self.tally.crash_files = tuple(self._crash_names)
        print(f"CRASH {name}: {what.splitlines()[0]}", file=sys.stderr, flush=True)

    def one(self, mode: int, index: int, raw: bytes, edits: list[Any], cut: int) -> None:
        """One input: ``mode`` 0 arbitrary bytes to a decoder, 1 a valid seed mutated to a decoder, 2 a valid
        frame mutated then a valid frame to the framer, 3 arbitrary bytes then a valid frame to the framer."""
        from tests.protocols.mutations import apply_all  # noqa: PLC0415

        self.tally.executions += 1
        if self.suite is None or (self.targets and mode < 2):
            if mode % 2 == 0:
                self.decoder(index, raw)
            else:
                seeds = self.seeds[index % len(self.targets)]
                self.decoder(index, apply_all(seeds[(index >> 8) % len(seeds)], edits))
        elif mode % 2 == 0:
            first = self.suite.encode(self.frames[(index >> 8) % len(self.frames)])
            self.framer(apply_all(first, edits), index, cut)
        else:
            self.framer(raw, index, cut)


def examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` values drawn from ``strategy`` (valid frames for the framer checks)."""
    out: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


# -- the hypothesis engine ---------------------------------------------------------------------------------


def run_hypothesis(fuzzer: Fuzzer, seconds: float) -> None:
    from tests.protocols import mutations  # noqa: PLC0415

    deadline = time.monotonic() + seconds

    @settings(max_examples=500, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        mode=st.integers(0, 3),
        index=st.integers(0, 1 << 16),
        raw=st.binary(max_size=600),
        edits=mutations.mutations(),
        cut=st.integers(0, 1200),
    )
    def batch(mode: int, index: int, raw: bytes, edits: list[Any], cut: int) -> None:
        if time.monotonic() < deadline:
            fuzzer.one(mode, index, raw, edits, cut)

    while time.monotonic() < deadline:
        batch()


# -- the atheris engine ------------------------------------------------------------------------------------


def run_atheris_child(protocol: str, seconds: float, crash_dir: Path, tally_path: Path) -> None:
    """In a child process: libFuzzer until ``-max_total_time``, the tally written every half second (libFuzzer
    ends the process with exit(), past Python's atexit)."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415  # optional

    from tests.protocols import mutations  # noqa: PLC0415

    with atheris.instrument_imports(include=["protocols"]):
        import protocols  # noqa: F401, PLC0415  # instrumented for coverage guidance
        from tests.protocols import fuzz_targets  # noqa: F401, PLC0415

        fuzzer = Fuzzer(protocol, crash_dir, "atheris")
    started = time.monotonic()
    last = [0.0]

    def write() -> None:
        fuzzer.tally.seconds = time.monotonic() - started
        tally_path.write_text(json.dumps(asdict(fuzzer.tally)))

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 3)
        index = fdp.ConsumeIntInRange(0, 1 << 16)
        cut = fdp.ConsumeIntInRange(0, 1200)
        edits = [
            mutations.from_ints(
                fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 1 << 16),
                fdp.ConsumeIntInRange(0, 64), fdp.ConsumeIntInRange(0, 7),
                fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)),
            )
            for _ in range(fdp.ConsumeIntInRange(1, 4))
        ]  # fmt: skip
        raw = fdp.ConsumeBytes(fdp.remaining_bytes())
        fuzzer.one(mode, index, raw, edits, cut)
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            write()

    write()
    atheris.Setup(
        [sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=1024", "-print_final_stats=1",
         "-rss_limit_mb=1536"],
        one_input,
    )  # fmt: skip
    atheris.Fuzz()


def run_atheris(protocol: str, seconds: float, crash_dir: Path) -> Tally:
    with tempfile.TemporaryDirectory(prefix="edgegw-fuzz-") as tmp:
        tally_path = Path(tmp) / "tally.json"
        command = [sys.executable, "-m", "bench.fuzz", "--child", protocol, "--seconds", str(seconds),
                   "--crash-dir", str(crash_dir), "--tally", str(tally_path)]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        if not tally_path.exists():
            raise SystemExit(f"the atheris child for {protocol} failed:\n{result.stderr[-3000:]}")
        tally = Tally(**{**json.loads(tally_path.read_text()), "crash_files": ()})
        tally.crash_files = tuple(json.loads(tally_path.read_text())["crash_files"])
        for line in result.stderr.splitlines():  # libFuzzer's own count is the last word on executions
            if line.startswith("stat::number_of_executed_units:"):
                tally.executions = max(tally.executions, int(line.split(":")[-1]))
        if result.returncode not in (0,):
            tally.crashes += 1  # libFuzzer itself stopped on something (a crash outside the checks)
            print(result.stderr[-3000:], file=sys.stderr)
        return tally


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401, PLC0415

    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", help="one protocol (default: every one, one after the other)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per protocol (default 60)")
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), help="default: atheris if installed")
    parser.add_argument("--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "edgegw-fuzz-crashes")
    parser.add_argument("--list", action="store_true", help="the protocols and their decoders, then exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tally", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        run_atheris_child(args.child, args.seconds, args.crash_dir, args.tally)
        return 0
    from tests.protocols import fuzz_targets  # noqa: PLC0415

    if args.list:
        for protocol in fuzz_targets.protocols():
            names = [t.name for t in fuzz_targets.targets_of(protocol)]
            framer = " + framer" if protocol in fuzz_targets.FRAMER_SUITES else ""
            print(f"{protocol}: {', '.join(names)}{framer}")
        return 0
    engine = args.engine or ("atheris" if have_atheris() else "hypothesis")
    protocols = [args.protocol] if args.protocol else fuzz_targets.protocols()
    run: Callable[[str], Tally]
    if engine == "atheris":
        run = lambda p: run_atheris(p, args.seconds, args.crash_dir)  # noqa: E731
    else:

        def run(protocol: str) -> Tally:
            fuzzer = Fuzzer(protocol, args.crash_dir, "hypothesis")
            started = time.monotonic()
            run_hypothesis(fuzzer, args.seconds)
            fuzzer.tally.seconds = time.monotonic() - started
            return fuzzer.tally

    print(f"engine {engine}, {args.seconds:g} s per protocol, pid {os.getpid()}")
    header = f"{'protocol':<12} {'execs':>10} {'exec/s':>8} {'decoder':>10} {'framer':>9} {'resync':>8} " \
             f"{'skipped':>8} {'crashes':>7}"  # fmt: skip
    print(header)
    total = 0
    for protocol in protocols:
        tally = run(protocol)
        total += tally.crashes
        rate = tally.executions / tally.seconds if tally.seconds else 0.0
        print(f"{tally.protocol:<12} {tally.executions:>10} {rate:>8.0f} {tally.decoder_runs:>10} "
              f"{tally.framer_runs:>9} {tally.resync_checks:>8} {tally.resync_skipped:>8} {tally.crashes:>7}",
              flush=True)  # fmt: skip
        for name in tally.crash_files:
            print(f"  {args.crash_dir / name}.bin")
    print(f"crashes: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
