"""``edgegw status``: a running gateway's metrics as a live terminal view, read from its ``/metrics``.

It scrapes the endpoint like Prometheus does (so it works from another shell, as another user, against the
gateway systemd runs, without touching its files) and parses the exposition with prometheus-client's own
parser. Rates come from two scrapes ``--interval`` apart: the live view refreshes every interval; ``--once``
scrapes twice, prints one plain-text snapshot and exits (no terminal needed: scripts, a ticket, a phone).

Which endpoint: ``--url``; else ``metrics.listen`` of the config file (``-c``, by default
``/etc/edgegw/gateway.yaml`` when it exists; only that key is read, so the secrets beside it need not be
readable); else ``http://127.0.0.1:9108/metrics``.
"""

from __future__ import annotations

import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from drivers.counters import BYTES_SKIPPED, DECODE_ERRORS, FRAMES_REJECTED
from gateway.config import split_listen

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_URL",
    "DeviceView",
    "Rates",
    "StatusError",
    "View",
    "main",
    "parse",
    "rates",
    "render_rich",
    "render_text",
    "resolve_url",
    "scrape",
]

DEFAULT_URL: Final = "http://127.0.0.1:9108/metrics"
DEFAULT_CONFIG: Final = Path("/etc/edgegw/gateway.yaml")
SCRAPE_TIMEOUT_S: Final = 5.0


class StatusError(Exception):
    """The endpoint cannot be found or read; the message says what to do."""


# --------------------------------------------------------------------------------------------------------
# Where


def resolve_url(url: str | None, config: Path | None) -> str:
    """The metrics URL to read (see the module docstring)."""
    if url:
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            url = url.rstrip("/") + "/metrics"
        return url
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        return DEFAULT_URL
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise StatusError(f"cannot read metrics.listen from {path}: {err}; give --url") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        return DEFAULT_URL
    if metrics.get("enabled") is False:
        raise StatusError(f"{path}: metrics.enabled is false: the gateway serves no metrics to read")
    listen = metrics.get("listen")
    if listen is None:
        return DEFAULT_URL
    try:
        host, port = split_listen(str(listen))
    except ValueError as err:
        raise StatusError(f"{path}: metrics.listen {listen!r}: {err}") from None
    if port == 0:
        raise StatusError(
            f"{path}: metrics.listen has port 0 (any free port): give --url with the port the gateway "
            "logged ('metrics: serving http://...')"
        )
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body.decode("utf-8")
    except urllib.error.HTTPError as err:
        raise StatusError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StatusError(
            f"cannot read {url}: {reason} (is the gateway running, with metrics enabled on that address?)"
        ) from None


# --------------------------------------------------------------------------------------------------------
# What


@dataclass
class DeviceView:
    name: str
    state: str = "unknown"
    events_in: float = 0.0
    """Committed, all kinds."""
    events_out: float = 0.0
    kinds_in: dict[str, float] = field(default_factory=dict)
    queue_dropped: float = 0.0
    restarts: float = 0.0
    decode_errors: float = 0.0
    bytes_skipped: float = 0.0
    frames_rejected: float = 0.0


@dataclass
class UpstreamView:
    """One upstream of ``upstreams:`` (or the one of ``upstream.mqtt``, named ``mqtt``)."""

    name: str
    kind: str = "?"
    up: bool | None = None
    backlog_events: float = 0.0
    backlog_bytes: float = 0.0
    dropped: float = 0.0
    delivered: float = 0.0
    errors: float = 0.0


@dataclass
class View:
    """One scrape, reduced to what the status view shows."""

    gateway_id: str = "?"
    healthy: bool | None = None
    upstream_connected: bool | None = None
    """None: the upstream is not an MQTT forwarder (e.g. the demo's console)."""
    inflight: float = 0.0
    acked: float = 0.0
    connects: float = 0.0
    disconnects: float = 0.0
    buffer_depth: float | None = None
    buffer_bytes: float = 0.0
    buffer_max_bytes: float = 0.0
    oldest_age_s: float = 0.0
    queue_events: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)
    loop_lag_max_s: float = 0.0
    latency_count: float = 0.0
    latency_sum: float = 0.0
    devices: dict[str, DeviceView] = field(default_factory=dict)
    upstreams: dict[str, UpstreamView] = field(default_factory=dict)

    @property
    def events_in(self) -> float:
        return sum(d.events_in for d in self.devices.values())

    @property
    def events_out(self) -> float:
        return sum(d.events_out for d in self.devices.values())


def parse(text: str) -> View:
    """A scrape of ``/metrics`` as a :class:`View` (samples it does not know are ignored)."""
    view = View()

    def device(labels: dict[str, str]) -> DeviceView:
        name = labels["device"]
        found = view.devices.get(name)
        if found is None:
            found = view.devices[name] = DeviceView(name)
        return found

    def upstream(labels: dict[str, str]) -> UpstreamView:
        name = labels.get("upstream", "?")
        found = view.upstreams.get(name)
        if found is None:
            found = view.upstreams[name] = UpstreamView(name)
        if "kind" in labels:
            found.kind = labels["kind"]
        return found

    gauges: dict[str, Callable[[float], None]] = {
        "edgegw_upstream_inflight": lambda v: setattr(view, "inflight", v),
        "edgegw_upstream_events_acked_total": lambda v: setattr(view, "acked", v),
        "edgegw_upstream_connects_total": lambda v: setattr(view, "connects", v),
        "edgegw_upstream_disconnects_total": lambda v: setattr(view, "disconnects", v),
        "edgegw_buffer_events": lambda v: setattr(view, "buffer_depth", v),
        "edgegw_buffer_bytes": lambda v: setattr(view, "buffer_bytes", v),
        "edgegw_buffer_max_bytes": lambda v: setattr(view, "buffer_max_bytes", v),
        "edgegw_buffer_oldest_age_seconds": lambda v: setattr(view, "oldest_age_s", v),
        "edgegw_queue_events": lambda v: setattr(view, "queue_events", v),
        "edgegw_loop_lag_max_seconds": lambda v: setattr(view, "loop_lag_max_s", v),
        "edgegw_upstream_publish_latency_seconds_count": lambda v: setattr(view, "latency_count", v),
        "edgegw_upstream_publish_latency_seconds_sum": lambda v: setattr(view, "latency_sum", v),
        "edgegw_upstream_connected": lambda v: setattr(view, "upstream_connected", v == 1),
        "edgegw_healthy": lambda v: setattr(view, "healthy", v == 1),
    }
    per_device: dict[str, str] = {
        "edgegw_device_events_dropped_total": "queue_dropped",
        "edgegw_device_restarts_total": "restarts",
        "edgegw_decode_errors_total": DECODE_ERRORS,
        "edgegw_framer_bytes_skipped_total": BYTES_SKIPPED,
        "edgegw_framer_frames_rejected_total": FRAMES_REJECTED,
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name in gauges:
                gauges[name](value)
            elif name == "edgegw_info":
                view.gateway_id = labels.get("gateway_id", "?")
            elif name == "edgegw_events_in_total":
                d = device(labels)
                d.events_in += value
                d.kinds_in[labels.get("kind", "?")] = value
            elif name == "edgegw_events_out_total":
                device(labels).events_out += value
            elif name == "edgegw_events_dropped_total":
                view.dropped[labels.get("reason", "?")] = value
            elif name == "edgegw_device_state":
                if value == 1:
                    device(labels).state = labels.get("state", "?")
                else:
                    device(labels)
            elif name in per_device:
                setattr(device(labels), per_device[name], value)
            elif name == "edgegw_upstream_backlog_events":
                upstream(labels).backlog_events = value
            elif name == "edgegw_upstream_backlog_bytes":
                upstream(labels).backlog_bytes = value
            elif name == "edgegw_upstream_dropped_events_total":
                upstream(labels).dropped += value
            elif name == "edgegw_upstream_up":
                upstream(labels).up = value == 1
            elif name == "edgegw_upstream_delivered_events_total":
                upstream(labels).delivered = value
            elif name == "edgegw_upstream_errors_total":
                upstream(labels).errors += value
    return view


@dataclass
class Rates:
    """Events per second between two scrapes; a device missing from either scrape (or whose counters went
    down: the gateway restarted) has no rate."""

    seconds: float
    device_in: dict[str, float]
    device_out: dict[str, float]
    total_in: float | None
    total_out: float | None


def rates(before: View, after: View, seconds: float) -> Rates:
    def rate(a: float, b: float) -> float | None:
        return (b - a) / seconds if b >= a and seconds > 0 else None

    device_in: dict[str, float] = {}
    device_out: dict[str, float] = {}
    for name, now in after.devices.items():
        then = before.devices.get(name)
        if then is None:
            continue
        r_in, r_out = rate(then.events_in, now.events_in), rate(then.events_out, now.events_out)
        if r_in is not None:
            device_in[name] = r_in
        if r_out is not None:
            device_out[name] = r_out
    return Rates(
        seconds,
        device_in,
        device_out,
        rate(before.events_in, after.events_in),
        rate(before.events_out, after.events_out),
    )


# --------------------------------------------------------------------------------------------------------
# How it looks


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _summary(view: View, r: Rates | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    health = {True: "healthy", False: "UNHEALTHY (see /healthz)", None: "?"}[view.healthy]
    rows.append(("gateway", f"{view.gateway_id}, {health}"))
    if view.upstream_connected is None:
        upstream = "not an MQTT forwarder"
    else:
        upstream = "connected" if view.upstream_connected else "NOT connected"
        upstream += (
            f" (in flight {_count(view.inflight)}, acked {_count(view.acked)}, connects "
            f"{_count(view.connects)}, lost {_count(view.disconnects)})"
        )
        if view.latency_count:
            upstream += f", PUBACK after {1000 * view.latency_sum / view.latency_count:.1f} ms on average"
    rows.append(("upstream", upstream))
    for u in sorted(view.upstreams.values(), key=lambda u: u.name):
        link = {True: "connected", False: "NOT connected", None: "?"}[u.up]
        rows.append(
            (
                f"  {u.name}",
                f"{u.kind}, {link}; backlog {_count(u.backlog_events)} events, {_bytes(u.backlog_bytes)}; "
                f"delivered {_count(u.delivered)}, dropped {_count(u.dropped)}, errors {_count(u.errors)}",
            )
        )
    if view.buffer_depth is None:
        rows.append(("backlog", "?"))
    else:
        size = f"{_bytes(view.buffer_bytes)} of {_bytes(view.buffer_max_bytes)}"
        backlog = f"{_count(view.buffer_depth)} events, {size}"
        if view.buffer_depth:
            backlog += f", oldest {_duration(view.oldest_age_s)}"
        rows.append(("backlog", backlog))
    if r is not None:
        rows.append(
            ("rates", f"{_rate(r.total_in)} events/s in, {_rate(r.total_out)} out (over {r.seconds:.1f} s)")
        )
    else:
        rows.append(("events", f"{_count(view.events_in)} in, {_count(view.events_out)} out"))
    drops = ", ".join(f"{reason} {_count(n)}" for reason, n in sorted(view.dropped.items())) or "none"
    rows.append(("drops", drops))
    rows.append(
        (
            "queue",
            f"{_count(view.queue_events)} events; loop lag at worst {1000 * view.loop_lag_max_s:.1f} ms",
        )
    )
    return rows


_DEVICE_COLUMNS: Final = (
    "device",
    "state",
    "in/s",
    "out/s",
    "in",
    "restarts",
    "q.drops",
    "decode err",
    "skipped B",
)


def _device_rows(view: View, r: Rates | None) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name in sorted(view.devices):
        d = view.devices[name]
        rows.append(
            (
                name,
                d.state,
                _rate(r.device_in.get(name) if r else None),
                _rate(r.device_out.get(name) if r else None),
                _count(d.events_in),
                _count(d.restarts),
                _count(d.queue_dropped),
                _count(d.decode_errors),
                _count(d.bytes_skipped),
            )
        )
    return rows


def render_text(view: View, r: Rates | None, url: str) -> str:
    """The plain-text snapshot of ``--once``."""
    lines = [f"edgegw status: {url}"]
    lines += [f"{label:<9} {text}" for label, text in _summary(view, r)]
    lines.append("")
    table = [_DEVICE_COLUMNS, *_device_rows(view, r)]
    widths = [max(len(row[i]) for row in table) for i in range(len(_DEVICE_COLUMNS))]
    for row in table:
        cells = [cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    if not view.devices:
        lines.append("(no devices)")
    return "\n".join(lines) + "\n"


_STATE_STYLE: Final = {
    "connected": "green",
    "disconnected": "yellow",
    "failed": "bold red",
    "starting": "cyan",
}


def render_rich(view: View, r: Rates | None, url: str, error: str | None = None) -> RenderableType:
    """The live view: the summary, then one row per device."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("edgegw status", Text(url, style="dim"))
    if error is not None:
        head.add_row("error", Text(error, style="bold red"))
    for label, text in _summary(view, r):
        style = "bold red" if ("NOT" in text or "UNHEALTHY" in text) else ""
        head.add_row(label, Text(text, style=style))
    devices = Table(expand=False)
    for i, column in enumerate(_DEVICE_COLUMNS):
        devices.add_column(column, justify="left" if i < 2 else "right")
    for row in _device_rows(view, r):
        state = Text(row[1], style=_STATE_STYLE.get(row[1], ""))
        devices.add_row(row[0], state, *row[2:])
    return Group(head, devices, Text("Ctrl-C to quit", style="dim"))


# --------------------------------------------------------------------------------------------------------
# The command


def _timed_scrape(url: str) -> tuple[View, float]:
    text = scrape(url)
    return parse(text), time.monotonic()


def main(
    *, url: str | None, config: Path | None, once: bool, interval: float, console: Console | None = None
) -> int:
    """``edgegw status``: exit 0, or 1 when the endpoint cannot be read (``--once``), 2 for bad arguments."""
    out = console or Console()
    if not (interval > 0 and math.isfinite(interval)):
        print("edgegw status: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        target = resolve_url(url, config)
    except StatusError as err:
        print(f"edgegw status: {err}", file=sys.stderr)
        return 2
    if once:
        try:
            first, t0 = _timed_scrape(target)
        except StatusError as err:
            print(f"edgegw status: {err}", file=sys.stderr)
            return 1
        time.sleep(interval)
        try:
            second, t1 = _timed_scrape(target)
        except StatusError:
            out.out(render_text(first, None, target), end="")
            return 0
        out.out(render_text(second, rates(first, second, t1 - t0), target), end="")
        return 0
    return _live(out, target, interval)


def _live(console: Console, url: str, interval: float) -> int:
    previous: tuple[View, float] | None = None
    last_view = View()
    try:
        with Live(
            render_rich(last_view, None, url, "connecting..."), console=console, auto_refresh=False
        ) as live:
            while True:
                error = None
                r: Rates | None = None
                try:
                    view, now = _timed_scrape(url)
                    if previous is not None:
                        r = rates(previous[0], view, now - previous[1])
                    previous = (view, now)
                    last_view = view
                except StatusError as err:
                    error = str(err)
                    previous = None
                live.update(render_rich(last_view, r, url, error), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
