"""The ``edgegw`` command.

::

    edgegw run   -c FILE        run the gateway (foreground; systemd runs it like this)
    edgegw check -c FILE        validate a config without opening any port: exit 0, or 2 with FILE:LINE lines
    edgegw sim   FAMILY ...     run a simulated device on loopback (see ``edgegw sim --help``)
    edgegw demo  [--mqtt URL]   a simulated roadside lane end to end
    edgegw decode PROTOCOL HEX  decode a captured frame, or say what is wrong with it (exit 0 good, 1 bad)
    edgegw buffer inspect|export|purge   field tools on a gateway's buffer file (running or stopped)
    edgegw schema [--device-file]   the config's JSON Schema, for YAML editors
    edgegw status [--once] [--url URL]   a running gateway's metrics, live (or one snapshot)
    edgegw ble record --out FILE   what a Bluetooth adapter hears, as a capture a ble device replays
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli import cmd as cmd_tool
from gateway.config import Config, ConfigError, load_config
from gateway.ops.logs import LogSetup

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def setup_logging(level: str, log_levels: dict[str, str] | None = None) -> LogSetup:
    """One line per record on stderr (see :mod:`gateway.ops.logs`); ``level`` for the root logger."""
    logs = LogSetup()
    logs.apply(level, log_levels)
    return logs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgegw", description="Edge gateway for RFID and sensor hardware.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway YAML file")
    run.add_argument("--log-level", default=None, help="override the config's log level")

    check = sub.add_parser("check", help="validate a config; open nothing")
    check.add_argument("-c", "--config", required=True, type=Path, help="gateway YAML file")

    sim = sub.add_parser("sim", help="run a simulated device on loopback", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="run a simulated roadside lane end to end")
    demo.add_argument(
        "--mqtt", metavar="URL", help="broker to publish to (default: 127.0.0.1:1883 if it answers)"
    )
    demo.add_argument("--console", action="store_true", help="show upstream messages on the console, no MQTT")
    demo.add_argument("--rate", type=float, default=20.0, help="tag reads per second per reader (default 20)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--log-level", default="warning")

    decode = sub.add_parser(
        "decode",
        help="decode a captured frame; say what is wrong with a bad one",
        description="Decode one captured frame. Exit 0: a good frame; 1: a bad one (the reasons are "
        "printed); 2: a usage error.",
    )
    decode.add_argument("protocol", metavar="PROTOCOL", help="the frame's protocol, e.g. r2000")
    decode.add_argument(
        "hex",
        nargs="+",
        metavar="HEX",
        help="the frame's bytes in hex, e.g. 'A0 04 01 89 01 D1', a0:04:01:89:01:d1 or '0xA0, 0x04, ...' "
        "(several arguments are joined; - reads the hex from stdin)",
    )
    decode.add_argument("--json", action="store_true", help="print one JSON document (for machines)")

    buffer = sub.add_parser("buffer", help="inspect, export or purge a gateway's buffer file")
    actions = buffer.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = argparse.ArgumentParser(add_help=False)
    source = where.add_mutually_exclusive_group()
    source.add_argument(
        "-c",
        "--config",
        type=Path,
        help="gateway YAML file naming the buffer (default /etc/edgegw/gateway.yaml)",
    )
    source.add_argument("--buffer", type=Path, metavar="FILE", help="the buffer file itself")

    inspect = actions.add_parser(
        "inspect",
        parents=[where],
        help="what the buffer holds: depth, bytes, ages, per device and kind, drops",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")

    export = actions.add_parser(
        "export",
        parents=[where],
        help="write the stored events as JSON lines, one upstream payload per line",
        description="Write the stored events as JSON lines (exactly the payloads the gateway publishes, "
        "id included), in seq order, up to the newest event present when the export starts. Safe beside a "
        "running gateway. A damaged file (such as one the gateway moved aside, buffer.db.corrupt-TIME) is "
        "salvaged: what can still be read is written the same way, and the damage is reported on stderr.",
    )
    export.add_argument("--out", type=Path, metavar="FILE", help="a new file to write (default: stdout)")
    export.add_argument("--after-seq", type=_non_negative, default=0, metavar="SEQ", help="start after SEQ")
    export.add_argument("--limit", type=_positive, default=None, metavar="N", help="at most N events")
    export.add_argument(
        "--gateway-id", metavar="ID", help="for the events' id (default: gateway.id of the config)"
    )

    purge = actions.add_parser(
        "purge",
        parents=[where],
        help="delete stored events up to a seq (or all); the gateway must be stopped",
        description="Delete stored events, never to be delivered. Refused while a gateway has the buffer "
        "open: stop it (systemctl stop edgegw), purge, start it. Without --yes, only says what it would "
        "delete.",
    )
    upto = purge.add_mutually_exclusive_group(required=True)
    upto.add_argument("--up-to", type=_positive, metavar="SEQ", help="delete the events with seq <= SEQ")
    upto.add_argument("--all", action="store_true", help="delete every stored event")
    purge.add_argument("--yes", action="store_true", help="really delete")

    schema = sub.add_parser(
        "schema",
        help="print the JSON Schema of the config (for YAML editors)",
        description="Print the JSON Schema of the gateway file (or, with --device-file, of a devices.d "
        "file), with the options of every driver installed here.",
    )
    schema.add_argument("--device-file", action="store_true", help="the schema of a devices.d/*.yaml file")

    ble = sub.add_parser("ble", help="Bluetooth LE field tools: record what an adapter hears")
    ble_actions = ble.add_subparsers(dest="action", required=True, metavar="ACTION")
    ble_record = ble_actions.add_parser(
        "record",
        help="write the advertisements an adapter hears as JSON lines (a capture a ble device can replay)",
        description="Scan with a Bluetooth adapter and append every advertisement heard to --out, one JSON "
        "line each (the replay format of the ble driver's `replay:`), until --duration, --count or Ctrl-C.",
    )
    ble_record.add_argument("--out", type=Path, required=True, help="the capture file (appended to)")
    ble_record.add_argument("--adapter", default="hci0", help="the Bluetooth adapter (default hci0)")
    ble_record.add_argument(
        "--scanning-mode", choices=("auto", "passive", "active"), default="auto", help="default auto"
    )
    ble_record.add_argument("--duration", type=float, help="seconds to record (default: until Ctrl-C)")
    ble_record.add_argument("--count", type=_positive, help="stop after this many advertisements")

    cmd_tool.add_parser(sub)

    status = sub.add_parser(
        "status",
        help="a running gateway's metrics, live: devices, rates, backlog, upstream, drops",
        description="Read a running gateway's /metrics and show it, refreshed every --interval seconds "
        "(Ctrl-C quits). The endpoint: --url; else metrics.listen of the config file (-c, default "
        "/etc/edgegw/gateway.yaml when it exists); else http://127.0.0.1:9108/metrics.",
    )
    status.add_argument("--once", action="store_true", help="print one plain-text snapshot and exit")
    status.add_argument("--url", help="the metrics endpoint, e.g. 127.0.0.1:9108 or http://host:9108/metrics")
    status.add_argument("-c", "--config", type=Path, help="gateway YAML file whose metrics.listen to read")
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between scrapes (and over which rates are taken)"
    )
    return parser


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _load(path: Path) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(path: Path) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    print(f"{path}: OK ({len(config.devices)} device{'s' if len(config.devices) != 1 else ''})")
    for warning in _route_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)
    if config.metrics.exposed is not None:
        print(f"{path}: warning: {config.metrics.exposed}", file=sys.stderr)
    return EXIT_OK


def _route_warnings(config: Config) -> list[str]:
    """Routes that match nothing this config can produce (every device emits device.status; an RFID
    device with smoothing also emits the smoothing's kinds)."""
    from drivers.kinds import DEVICE_STATUS, RFID_ARRIVED, RFID_DEPARTED, RFID_FLOW, RFID_MOVED  # noqa: PLC0415
    from gateway.delivery.upstream import route_warnings  # noqa: PLC0415

    devices = []
    for d in config.devices:
        emits = frozenset(d.driver_class.emits)
        if emits:
            emits |= {DEVICE_STATUS}
            if d.smoothing is not None:
                emits |= {RFID_ARRIVED, RFID_DEPARTED, RFID_FLOW, RFID_MOVED}
        devices.append((d.name, emits))
    return route_warnings(config.upstream_list, devices)


async def _run_until_signalled(config: Config, logs: LogSetup) -> None:
    from gateway.app import Gateway  # noqa: PLC0415  # `edgegw check` stays light: no asyncio runtime imports

    def relog(new: Config) -> None:
        logs.apply(new.gateway.log_level, new.gateway.log_levels)

    gateway = Gateway(config, on_logging=relog)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    await gateway.run(stop)


def cmd_run(path: Path, log_level: str | None) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    logs = LogSetup(override=log_level)
    logs.apply(config.gateway.log_level, config.gateway.log_levels)
    log = logging.getLogger("edgegw")
    log.info("edgegw starting: gateway %s, %d devices", config.gateway.id, len(config.devices))
    from gateway.delivery.buffer import BufferOpenError  # noqa: PLC0415  # `edgegw check` stays light

    try:
        asyncio.run(_run_until_signalled(config, logs))
    except BufferOpenError as err:  # what an operator must fix: one line, naming the path and the problem
        log.critical("edgegw cannot start: %s", err)
        return EXIT_FAILURE
    except Exception as err:  # one log line (the traceback joined), and a failure exit for Restart=
        log.critical("edgegw failed: %s: %s", type(err).__name__, err, exc_info=True)
        return EXIT_FAILURE
    log.info("edgegw stopped")
    return EXIT_OK


def cmd_decode(protocol: str, hex_args: Sequence[str], as_json: bool = False) -> int:
    import os  # noqa: PLC0415

    from gateway.cli.decode import UnknownProtocol, decode, parse_hex  # noqa: PLC0415  # loads the codecs

    text = sys.stdin.read() if list(hex_args) == ["-"] else " ".join(hex_args)
    try:
        raw = parse_hex(text)
        decoded = decode(protocol, raw)
    except (ValueError, UnknownProtocol) as err:
        print(f"edgegw decode: {err}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        print(decoded.render_json() if as_json else decoded.render(), flush=True)
    except BrokenPipeError:  # `edgegw decode ... | head`: the reader has seen enough; no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK if decoded.ok else EXIT_FAILURE


def cmd_buffer(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from gateway.cli import buffertool  # noqa: PLC0415  # pulls in the forwarder's payload encoding

    try:
        path, gateway_id = buffertool.locate(args.config, args.buffer)
        if args.action == "inspect":
            inspection = buffertool.inspect(path)
            print(json.dumps(inspection.to_json(), indent=2) if args.json else inspection.render())
            damaged = inspection.salvage
            return EXIT_FAILURE if damaged is not None and not damaged.events else EXIT_OK
        if args.action == "export":
            gateway_id = args.gateway_id or gateway_id
            if gateway_id is None:
                print(
                    "edgegw buffer export: the events' id needs the gateway id: give --gateway-id ID "
                    "(or -c CONFIG)",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            options = {"after_seq": args.after_seq, "limit": args.limit}
            if args.out is None:
                result = buffertool.export(path, gateway_id, sys.stdout.buffer, **options)
                sys.stdout.buffer.flush()
                where = "stdout"
            else:
                result = buffertool.export_to_file(path, gateway_id, args.out, **options)
                where = str(args.out)
            if result.salvage is not None:  # a damaged file: what was recovered, and how
                print(buffertool.salvage_summary(result, where), file=sys.stderr)
                return EXIT_OK if result.salvage.events else EXIT_FAILURE
            if result.events:
                print(
                    f"exported {result.events} events (seq {result.first_seq}..{result.last_seq}) "
                    f"to {where}; "
                    f"once they are delivered: edgegw buffer purge --up-to {result.last_seq} --yes "
                    "(with the gateway stopped)",
                    file=sys.stderr,
                )
            else:
                print(f"exported 0 events to {where}", file=sys.stderr)
            return EXIT_OK
        up_to = None if args.all else args.up_to
        if not args.yes:
            plan = buffertool.plan_purge(path, up_to)
            print(f"{path}: would purge {plan.describe()}; nothing deleted: add --yes to delete")
            return EXIT_FAILURE
        plan = buffertool.purge(path, up_to)
        print(f"{path}: purged {plan.describe().replace('would remain', 'remain')}")
        return EXIT_OK
    except buffertool.BufferToolError as err:
        print(f"edgegw buffer {args.action}: {err}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_schema(device_file: bool) -> int:
    from gateway.config.schema import build, dumps  # noqa: PLC0415  # loads every driver

    gateway_schema, device_schema, left_out = build()
    for line in left_out:
        print(f"edgegw schema: {line}", file=sys.stderr)
    sys.stdout.write(dumps(device_schema if device_file else gateway_schema))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["sim"]:
        # The simulators parse their own arguments (and --help): argparse's REMAINDER would not take a first
        # word that starts with "-", and `edgegw sim --help` would be an error.
        from firmware_sim.cli import main as sim_main  # noqa: PLC0415  # simulators load only for `sim`

        return sim_main(words[1:])
    args = _parser().parse_args(words)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "run":
        return cmd_run(args.config, args.log_level)
    if args.command == "demo":
        from gateway.cli.demo import main as demo_main  # noqa: PLC0415  # the demo pulls in the simulators

        setup_logging(args.log_level)
        return demo_main(mqtt_url=args.mqtt, console=args.console, rate=args.rate, duration=args.duration)
    if args.command == "decode":
        return cmd_decode(args.protocol, args.hex, args.json)
    if args.command == "buffer":
        return cmd_buffer(args)
    if args.command == "schema":
        return cmd_schema(args.device_file)
    if args.command == "ble":
        from gateway.cli.ble import record  # noqa: PLC0415  # bleak loads only for `ble`

        return record(
            args.out,
            adapter=args.adapter,
            scanning_mode=args.scanning_mode,
            duration=args.duration,
            count=args.count,
        )
    if args.command == "cmd":
        return cmd_tool.main(args)
    if args.command == "status":
        from gateway.cli.status import main as status_main  # noqa: PLC0415  # rich and the parser load only here

        return status_main(url=args.url, config=args.config, once=args.once, interval=args.interval)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
