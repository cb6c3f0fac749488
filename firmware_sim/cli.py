"""``edgegw sim FAMILY ...``: run a simulated device on loopback until Ctrl-C or SIGTERM.

``main(argv)`` takes the arguments after ``sim``. Each device family is a subcommand registered in
:data:`FAMILIES` (a function adding its parser, and the coroutine that runs it), so another family is one more
entry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import TextIO

from . import can as _can
from . import dlt645 as _dlt645
from . import gps as _gps
from . import hj212 as _hj212
from . import llrp as _llrp
from . import modbus as _modbus
from . import serving
from . import xbee as _xbee
from .r2000 import Faults, SimOptions, serve_pty, serve_tcp
from .tags import antenna_list, parse_epc

__all__ = ["FAMILIES", "main", "parse_faults"]

FAULT_HELP = """\
fault SPECs (repeat --fault, or separate with commas):
  noise=P            random bytes before a frame, with probability P per frame (0..1)
  bad-checksum=P     a frame's checksum corrupted, with probability P
  drop=P             some bytes of a frame lost, with probability P
  silence=S/EVERY    silent (no answers, no streaming) for S seconds every EVERY seconds
  disconnect=EVERY[/DOWN]
                     the link drops every EVERY seconds (pty closed and reopened, the link re-pointed;
                     TCP connections closed) and stays down DOWN seconds (default 0)
example: --fault noise=0.01 --fault bad-checksum=0.005,silence=5/30 --fault disconnect=60/2
"""


def _probability(name: str, text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={text}: a probability is 0..1")
    return value


def _seconds(name: str, text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"{name}: {text} seconds must not be negative")
    return value


def parse_faults(specs: list[str]) -> Faults:
    """Faults from ``--fault`` SPECs (see :data:`FAULT_HELP`); ValueError names a bad one."""
    return Faults(**serving.parse_fault_specs(specs, _fault_fields))


def _fault_fields(name: str, value: str | None) -> dict[str, float]:
    if not value:
        raise ValueError("expected NAME=VALUE")
    if name in ("noise", "bad-checksum", "drop"):
        return {name.replace("-", "_"): _probability(name, value)}
    if name == "silence":
        length, slash, every = value.partition("/")
        if not slash:
            raise ValueError("silence=S/EVERY")
        fields = {"silence_s": _seconds(name, length), "silence_every_s": _seconds(name, every)}
        if fields["silence_every_s"] <= 0:
            raise ValueError("silence period must be positive")
        return fields
    if name == "disconnect":
        every, _, down = value.partition("/")
        fields = {
            "disconnect_every_s": _seconds(name, every),
            "disconnect_down_s": _seconds(name, down) if down else 0.0,
        }
        if fields["disconnect_every_s"] <= 0:
            raise ValueError("disconnect period must be positive")
        return fields
    raise ValueError(f"unknown fault {name!r}")


def _add_r2000(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "uhf-r2000",
        help="UHF RFID reader, R2000 0xA0 serial protocol",
        description="Simulated R2000 (0xA0 protocol) UHF RFID reader on a pty or a TCP port.",
        epilog=FAULT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_link_or_tcp(parser)
    parser.add_argument("--rate", type=float, default=1000.0, help="tag reads per second (default 1000)")
    parser.add_argument("--tags", type=int, default=20, help="tag population size (default 20)")
    parser.add_argument(
        "--epc",
        type=parse_epc,
        action="append",
        default=[],
        metavar="EPC",
        help="a tag of the population, as 24 hex digits or an EPC URI (urn:epc:tag:grai-96:... or "
        "urn:epc:id:sscc:...); repeat for more; replaces --tags",
    )
    parser.add_argument("--address", type=int, default=1, help="reader address (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the population and randomness")
    parser.add_argument(
        "--antennas", type=antenna_list(8), default=(1, 2, 3, 4), help="connected antennas (1,2,3,4)"
    )
    parser.add_argument("--round-ms", type=float, default=50.0, help="inventory round duration (default 50)")
    parser.add_argument("--rssi-mean", type=float, default=-60.0, help="mean RSSI in dBm (default -60)")
    parser.add_argument("--rssi-spread", type=float, default=6.0, help="RSSI spread in dB (default 6)")
    parser.add_argument("--fault", action="append", default=[], metavar="SPEC", help="inject faults (below)")
    return parser


async def _run_r2000(args: argparse.Namespace, stop: asyncio.Event, out: TextIO) -> None:
    options = SimOptions(
        address=args.address,
        tags=args.tags,
        epcs=tuple(args.epc),
        rate=args.rate,
        rssi_mean=args.rssi_mean,
        rssi_spread=args.rssi_spread,
        round_ms=args.round_ms,
        antennas=args.antennas,
        seed=args.seed,
        faults=args.faults,
    )
    what = f"uhf-r2000 simulator (address {options.address})"
    await serving.serve_until_stopped(what, args, options, serve_pty, serve_tcp, stop=stop, out=out)


Runner = Callable[[argparse.Namespace, asyncio.Event, TextIO], Awaitable[None]]
FAMILIES: dict[str, tuple[Callable[..., argparse.ArgumentParser], Runner]] = {
    "uhf-r2000": (_add_r2000, _run_r2000),
    "dlt645": (_dlt645.add_parser, _dlt645.run_from_args),
    "llrp": (_llrp.add_parser, _llrp.run_from_args),
    "modbus": (_modbus.add_parser, _modbus.run_from_args),
    "gps": (_gps.add_parser, _gps.run_from_args),
    "can": (_can.add_parser, _can.run_from_args),
    "hj212-platform": (_hj212.add_parser, _hj212.run_from_args),
    "xbee": (_xbee.add_parser, _xbee.run_from_args),
}
"""Subcommand name -> (adds its parser to the subparsers, runs it until the stop event is set)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgegw sim",
        description="Run a simulated device on loopback (a pty or a TCP port) until Ctrl-C or SIGTERM.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="families", dest="family", metavar="FAMILY", required=True)
    usages: list[str] = []
    for name, (add, _) in FAMILIES.items():
        family = add(sub)
        family.set_defaults(family=name)
        prefix = "usage: "  # argparse's; the lines under it are indented by as much as it is long
        first, *rest = family.format_usage().rstrip().splitlines()
        usages.append("\n".join([first.removeprefix(prefix), *(line[len(prefix) :] for line in rest)]))
    # Each family's usage line lists its options; its own --help says what they mean, and its faults.
    parser.epilog = "each family's options (edgegw sim FAMILY --help explains them, and the faults):\n" + (
        "\n".join(textwrap.indent(usage, "  ") for usage in usages)
    )
    return parser


async def _serve(runner: Runner, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await runner(args, stop, sys.stdout)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str]) -> int:
    """Run ``edgegw sim`` with ``argv`` (the words after ``sim``); returns the exit status."""
    parser = _parser()
    if not argv:  # no family: say which there are, as --help does, and that this was a usage error
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        args.faults = parse_faults(args.fault) if hasattr(args, "fault") else Faults()
    except ValueError as err:
        parser.print_usage(sys.stderr)
        print(f"edgegw sim: error: {err}", file=sys.stderr)
        return 2
    _, runner = FAMILIES[args.family]
    try:
        asyncio.run(_serve(runner, args))
    except (OSError, ValueError) as err:
        print(f"edgegw sim: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C before the handlers were installed
        return 0
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0
