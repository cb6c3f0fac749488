"""What the Sparkplug B and HJ 212 upstreams cost per event: ``python -m bench.upstream_protocols [--runs N]
[--events N]``.

CPU time per event (this process, one core; medians of ``--runs`` runs of ``--events`` events, the cases
interleaved run by run) of the upstreams' own code on one ``meter.reading`` of a water-quality analyser
(five values, as the buffer stores it):

- ``sparkplug DDATA``: :meth:`SparkplugUpstream._send` on a device already born: the JSON parsed, the metrics
  mapped, the payload built with aliases and serialised, handed to a connection that only counts (no
  socket: the broker's cost is not ours);
- ``hj212 fold``: :meth:`Hj212Upstream._fold`: the JSON parsed, the values mapped to pollutants and added to
  the open minute and hour intervals;
- ``hj212 2011 packet``: one real-time upload of five pollutants built and encoded (CRC included);
- ``hj212 framer``: one such packet found by :class:`protocols.hj212.Hj212Framer` in a stream (what the
  platform simulator, and the upstream for replies, do per packet).

The machine is shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from gateway.delivery.buffer import Stored
from gateway.delivery.hj212 import Hj212Options, Hj212Upstream
from gateway.delivery.sparkplug import SparkplugOptions, SparkplugUpstream
from gateway.delivery.upstream import UpstreamContext
from protocols import hj212

VALUES = {"cod": 23.4, "ammonia": 0.42, "ph": 7.25, "turbidity": 1.8, "flow_rate": 812.5}
UNITS = {"cod": "mg/L", "ammonia": "mg/L", "ph": "pH", "turbidity": "NTU", "flow_rate": "m3/h"}


class _CountingConnection:
    """Takes publishes and counts them (the bench measures our side only)."""

    def __init__(self) -> None:
        self.mid = 0
        self.bytes = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        self.mid += 1
        self.bytes += len(payload)
        return self.mid


def rows(n: int, start: float) -> list[Stored]:
    out = []
    for i in range(n):
        values = {k: round(v + (i % 7) * 0.1, 3) for k, v in VALUES.items()}
        data = json.dumps({"values": values, "units": UNITS}, separators=(",", ":")).encode()
        out.append(Stored(i + 1, "outfall-quality", "meter.reading", start + i, data))
    return out


def sparkplug_case(events: int) -> Callable[[], float]:
    options = SparkplugOptions.model_validate(
        {
            "name": "scada",
            "kind": "sparkplug",
            "url": "mqtt://127.0.0.1",
            "group_id": "g",
            "edge_node_id": "e",
        }
    )
    upstream = SparkplugUpstream(options, _no_cursor(), UpstreamContext("bench"))
    conn: Any = _CountingConnection()
    data = rows(events, time.time())
    upstream._send(conn, data[0])  # born: every later event is a DDATA

    def run() -> float:
        upstream._pending.clear()
        t = time.process_time()
        for row in data:
            upstream._send(conn, row)
        return time.process_time() - t

    return run


def hj212_options(tmp: Path) -> Hj212Options:
    secret = tmp / "pw"
    secret.write_text("123456\n")
    return Hj212Options.model_validate(
        {
            "name": "epb",
            "kind": "hj212",
            "address": "127.0.0.1:9001",
            "mn": "010000A8900016F000169DC0",
            "st": 32,
            "password_file": str(secret),
            "pollutants": {
                "cod": "w01018",
                "ammonia": "w21003",
                "ph": "w01001",
                "turbidity": "w01003",
                "flow_rate": {"code": "w00000", "flow": True, "per": "h"},
            },
        }
    )


def fold_case(options: Hj212Options, events: int) -> Callable[[], float]:
    def run() -> float:
        upstream = Hj212Upstream(options, _no_cursor(), UpstreamContext("bench"))
        data = rows(events, 1_700_000_000.0)
        t = time.process_time()
        for row in data:
            upstream._fold(row)
        return time.process_time() - t

    return run


def packet_case(events: int) -> Callable[[], float]:
    groups: list[hj212.Group] = [(("DataTime", "20240101120000"),)] + [
        ((f"w0101{i}-Rtd", f"{v:.3f}"), (f"w0101{i}-Flag", "N")) for i, v in enumerate(VALUES.values())
    ]

    def run() -> float:
        t = time.process_time()
        for i in range(events):
            head = hj212.Packet(
                qn=f"2024010112{i % 10000:07d}", st="32", cn="2011", pw="123456", mn="M", flag=5
            )
            for packet in hj212.split_packets(head, groups):
                hj212.encode_packet(packet)
        return time.process_time() - t

    return run


def framer_case(events: int) -> Callable[[], float]:
    groups = [(("DataTime", "20240101120000"),)] + [
        ((f"w0101{i}-Rtd", f"{v:.3f}"), (f"w0101{i}-Flag", "N")) for i, v in enumerate(VALUES.values())
    ]
    raw = hj212.encode_packet(
        hj212.Packet(
            qn="20240101120000000",
            st="32",
            cn="2011",
            pw="123456",
            mn="M",
            flag=5,
            cp=hj212.format_cp(groups),
        )
    )
    stream = raw * events
    chunks = [stream[i : i + 1460] for i in range(0, len(stream), 1460)]  # TCP segments

    def run() -> float:
        framer = hj212.Hj212Framer()
        t = time.process_time()
        found = 0
        for chunk in chunks:
            found += len(framer.feed(chunk))
        elapsed = time.process_time() - t
        assert found == events
        return elapsed

    return run


def _no_cursor() -> Any:
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upstream_protocols", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    with TemporaryDirectory() as tmp:
        options = hj212_options(Path(tmp))
        cases = {
            "sparkplug DDATA": sparkplug_case(args.events),
            "hj212 fold": fold_case(options, args.events),
            "hj212 2011 packet": packet_case(args.events),
            "hj212 framer": framer_case(args.events),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, case in cases.items():  # interleaved: a slow moment hits every case alike
                times[name].append(case())
    print(f"{args.runs} runs of {args.events} events; CPU of this process (one core); median per case")
    print(f"{'case':20} {'us/event':>9} {'events/s':>10}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:20} {median / args.events * 1e6:9.2f} {args.events / median:10.0f}")


if __name__ == "__main__":
    main()
