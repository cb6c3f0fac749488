"""``edgegw cmd -c FILE DEVICE COMMAND [key=value ...]``: one command request through the configured broker,
its result printed as JSON (for commissioning and support).

The broker, prefix, gateway id, credentials, TLS and HMAC key are those of the config file (the MQTT upstream
that enables commands). ``--gateway COMMAND`` addresses the gateway itself (``ping``, ``status``,
``reload``). Arguments are ``key=value``: the value is read as JSON when it is JSON (``value=250``,
``on=true``, ``points=["a","b"]``, ``name="x"``) and as a plain string otherwise (``point=ct_primary_a``); a
dotted key nests (``values.vt_ratio=4`` is ``{"values": {"vt_ratio": 4}}``). ``--args JSON`` gives the whole
``args`` object instead.

Exit status: 0 ok, 3 error, 4 refused, 5 expired, 6 timeout (the gateway's), 7 no result arrived within
``--wait``, 2 a usage or configuration error, 1 the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["EXIT_BY_STATUS", "add_parser", "main", "parse_args"]

EXIT_BY_STATUS: Final = {"ok": 0, "error": 3, "refused": 4, "expired": 5, "timeout": 6}
EXIT_NO_RESULT: Final = 7
EXIT_USAGE: Final = 2
EXIT_BROKER: Final = 1


def add_parser(sub: Any) -> None:
    """The ``cmd`` subcommand, on the CLI's subparsers."""
    cmd = sub.add_parser(
        "cmd",
        usage="edgegw cmd -c FILE [--wait S] [--args JSON] (DEVICE | --gateway) COMMAND [key=value ...]",
        help="send a command to a device (or the gateway) through the broker and print the result",
        description="Send one command request through the broker of the config file and print its result "
        "as JSON. Exit 0 ok, 3 error, 4 refused, 5 expired, 6 timeout, 7 no result within --wait, 2 usage "
        "or config error, 1 broker unreachable.",
    )
    cmd.add_argument("-c", "--config", required=True, type=Path, help="gateway YAML file")
    cmd.add_argument("--gateway", action="store_true", help="address the gateway itself: COMMAND [key=value]")
    cmd.add_argument("--args", dest="args_json", metavar="JSON", help="the whole args object, as JSON")
    cmd.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the result (default 15)")
    cmd.add_argument(
        "words",
        nargs="+",
        metavar="WORD",
        help="DEVICE COMMAND [key=value ...], or COMMAND [key=value ...] with --gateway",
    )


def parse_args(words: Sequence[str]) -> dict[str, Any]:
    """``key=value`` words as an ``args`` object (see the module docstring); ValueError for a bad word."""
    args: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r}: expected key=value")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = args
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{word!r}: {part!r} already has a value")
            node = child
        node[leaf] = value
    return args


def main(ns: argparse.Namespace) -> int:
    from gateway.commands.client import CommandClient, NoResult  # noqa: PLC0415  # paho only for `cmd`
    from gateway.commands.service import commands_broker  # noqa: PLC0415
    from gateway.config import ConfigError, load_config  # noqa: PLC0415
    from gateway.delivery.mqtt import MqttError  # noqa: PLC0415

    words: list[str] = list(ns.words)
    device: str | None
    if ns.gateway:
        device, command, rest = None, words[0], words[1:]
    elif len(words) < 2:
        print("edgegw cmd: give DEVICE COMMAND (or --gateway COMMAND)", file=sys.stderr)
        return EXIT_USAGE
    else:
        device, command, rest = words[0], words[1], words[2:]
    try:
        if ns.args_json is not None:
            if rest:
                raise ValueError("give either --args or key=value words, not both")
            args = json.loads(ns.args_json)
            if not isinstance(args, dict):
                raise ValueError("--args must be a JSON object")
        else:
            args = parse_args(rest)
    except ValueError as err:
        print(f"edgegw cmd: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(ns.config)
    except ConfigError as err:
        print(f"edgegw cmd: {ns.config} is invalid:\n{err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"edgegw cmd: cannot read {ns.config}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE

    if commands_broker(config) is None:
        print(
            f"edgegw cmd: {ns.config} enables commands on no MQTT upstream (upstream.mqtt.commands.enabled)",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def send() -> int:
        async with CommandClient(config) as client:
            result = await client.send(device, command, args, timeout_s=ns.wait)
        print(json.dumps(dict(result.raw), indent=2, ensure_ascii=False))
        return EXIT_BY_STATUS.get(result.status, EXIT_BY_STATUS["error"])

    try:
        return asyncio.run(send())
    except NoResult as err:
        print(f"edgegw cmd: {err}", file=sys.stderr)
        return EXIT_NO_RESULT
    except MqttError as err:
        print(f"edgegw cmd: {err}", file=sys.stderr)
        return EXIT_BROKER
