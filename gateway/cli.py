"""The ``edgegw`` command.

::

    edgegw run   -c FILE        run the gateway (foreground; systemd runs it like this)
    edgegw check -c FILE        validate a config without opening any port: exit 0, or 2 with FILE:LINE lines
    edgegw sim   FAMILY ...     run a simulated device on loopback (see ``edgegw sim --help``)
    edgegw demo  [--mqtt URL]   a simulated roadside lane end to end
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import Config, ConfigError, load_config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT)


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
    return parser


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
    return EXIT_OK


async def _run_until_signalled(config: Config) -> None:
    from .app import Gateway  # noqa: PLC0415  # `edgegw check` stays light: no asyncio runtime imports

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Gateway(config).run(stop)


def cmd_run(path: Path, log_level: str | None) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    setup_logging(log_level or config.gateway.log_level)
    logging.getLogger("edgegw").info(
        "edgegw starting: gateway %s, %d devices", config.gateway.id, len(config.devices)
    )
    asyncio.run(_run_until_signalled(config))
    logging.getLogger("edgegw").info("edgegw stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "run":
        return cmd_run(args.config, args.log_level)
    if args.command == "sim":
        from firmware_sim.cli import main as sim_main  # noqa: PLC0415  # simulators load only for `sim`

        return sim_main(list(args.args))
    if args.command == "demo":
        from .demo import main as demo_main  # noqa: PLC0415  # the demo pulls in the simulators

        setup_logging(args.log_level)
        return demo_main(mqtt_url=args.mqtt, console=args.console, rate=args.rate, duration=args.duration)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
