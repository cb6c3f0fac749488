"""config/grafana/edgegw.json: every metric a panel (or a variable) queries is one a running gateway exposes.

The gateway runs in this process against real parts (a simulated R2000 reader on a pseudo-terminal, the
private mosquitto) and is scraped over HTTP; prometheus-client's parser turns the scrape into metric
families. The PromQL of the dashboard is taken apart by :func:`metric_names` (hand-written: the test needs
only the metric names and the label names of each selector and grouping, and the one maintained Python
PromQL parser, promql-parser, is not a dependency of the project; its own tests are below).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from firmware_sim.r2000 import R2000Simulator, SimOptions, serve_pty
from gateway.app import Gateway
from gateway.config import load_config
from tests.broker import Mosquitto
from tests.gateway.ops_helpers import http_get, r2000, running, write_gateway
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "edgegw.json"

# Labels Prometheus adds at scrape time (target labels), not in the exposition.
TARGET_LABELS = frozenset({"instance", "job"})
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier that is not a function or an
    aggregation (followed by ``(``), a keyword, a label (in ``{...}`` or a grouping list), a duration
    (in ``[...]``, after ``offset``), a number (``1e3``, ``Inf``) or a Grafana variable (``$__range``)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _NAME.finditer(s):
        word, before = m.group(), s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":
            continue
        if s[m.end() :].lstrip().startswith("(") or word in _KEYWORDS or word.lower() in ("inf", "nan"):
            continue
        names.add(word)
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, the label names its matchers use) for each ``name{...}`` selector."""
    for m in _SELECTOR.finditer(_STRING.sub('""', expr)):
        yield m.group(1), set(_MATCHER.findall(m.group(2)))


def groupings(expr: str) -> Iterator[tuple[set[str], set[str]]]:
    """(the labels of ``by (...)``, the metric names of the parenthesised expression it applies to) for
    each ``agg by (labels) (expr)`` of the expression."""
    s = _STRING.sub('""', expr)
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", s):
        depth, start = 1, m.end()
        end = start
        while depth:
            depth += {"(": 1, ")": -1}.get(s[end], 0)
            end += 1
        labels = {label.strip() for label in m.group(1).split(",") if label.strip()}
        yield labels, metric_names(s[start : end - 1])


# -- the extractor's own tests ----------------------------------------------------------------------------


def test_metric_names_skip_functions_labels_durations_numbers_and_variables() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (instance, le) (rate(a_bucket{instance=~"$instance", x="b c"}'
        "[$__rate_interval]))) / ignoring(le) group_left b_total offset 5m > bool 1e3 "
        'or on(device) c:recorded unless max without (state) (d{state="x,y"}) * Inf'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c:recorded", "d"}
    assert metric_names("sum(x) by (device)") == {"x"}
    assert metric_names('count_values("v", up)') == {"up"}
    assert list(selector_labels('rate(a{device="x", state!~"y"}[5m]) + b')) == [("a", {"device", "state"})]
    assert list(groupings("sum by (instance, device) (rate(a[1m])) + max by (x) (b * c)")) == [
        ({"instance", "device"}, {"a"}),
        ({"x"}, {"b", "c"}),
    ]


# -- the dashboard ------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        loaded = json.load(f)
    assert isinstance(loaded, dict)
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def legends(board: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(where, PromQL, the labels its legend names as ``{{label}}``) of every panel target."""
    return [
        (
            f"panel {panel['title']!r} {t['refId']}",
            t["expr"],
            set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"])),
        )
        for panel in all_panels(board["panels"])
        for t in panel.get("targets", [])
    ]


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*\w+\s*\)", query)
            found.append((f"variable {var['name']!r}", inner.group(1) if inner else query))
    return found


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in all_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = {p["title"] for p in all_panels(board["panels"]) if p["type"] != "row"}
    for wanted in (
        "Events in per device (committed to the buffer)",
        "Events out per device (first publish)",
        "Backlog per upstream",
        "Backlog age per upstream",
        "Drops by reason",
        "Device state",
        "Event-loop lag",
    ):
        assert wanted in titles
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    assert all(metric_names(expr) for _, expr in queries(board)), "a query selects no metric"


@pytest.fixture
async def reader(tmp_path: Path) -> AsyncIterator[R2000Simulator]:
    async with serve_pty(tmp_path / "ttyR1", SimOptions(tags=10, rate=200.0, seed=5, antennas=(1, 2))) as sim:
        yield sim


def exposed(text: str) -> dict[str, set[str]]:
    """Every series name a scrape offers a query (a counter ``x`` as ``x_total``, a histogram as
    ``_bucket``, ``_sum`` and ``_count``...), with the label names seen on its samples. Families without a
    sample (a labelled counter nothing was counted in yet) are offered too, with no labels known."""
    names: dict[str, set[str]] = {}
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "untyped": ("",),
    }
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


async def test_every_metric_the_dashboard_queries_is_exposed_by_a_running_gateway(
    tmp_path: Path, broker: Mosquitto, reader: R2000Simulator
) -> None:
    config = write_gateway(
        tmp_path / "gateway.yaml",
        gateway_id="dash-1",
        url=broker.url,
        devices=r2000("reader-1", tmp_path / "ttyR1"),
    )
    gateway = Gateway(load_config(config))
    async with running(gateway):
        assert gateway.metrics is not None and gateway.counts is not None
        counts = gateway.counts
        await until("reads delivered", lambda: counts.acked >= 20)
        code, body = await http_get(gateway.metrics.port, "/metrics")
    assert code == 200
    offered = exposed(body.decode())

    problems = []
    for where, expr in queries(dashboard()):
        for name in sorted(metric_names(expr)):
            if name not in offered:
                problems.append(f"{where}: {name} is not exposed")
        for name, labels in selector_labels(expr):
            known = offered.get(name, set())
            if known and not labels <= known | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {sorted(labels - known - TARGET_LABELS)}")
        for labels, inner in groupings(expr):
            known = set().union(*(offered.get(n, set()) for n in inner)) | TARGET_LABELS
            if all(offered.get(n) for n in inner) and not labels <= known:
                problems.append(f"{where}: grouped by {sorted(labels - known)}, which {sorted(inner)} lack")
    for where, expr, named in legends(dashboard()):
        grouped = [labels for labels, _ in groupings(expr)]
        if grouped:  # what an aggregation keeps is all a legend can name
            keeps = set().union(*grouped) | TARGET_LABELS
        else:
            keeps = set().union(*(offered.get(n, set()) for n in metric_names(expr))) | TARGET_LABELS
        if not named <= keeps:
            problems.append(f"{where}: the legend names {sorted(named - keeps)}, which the query drops")
    assert problems == []
    # The families the issue names are there with their labels, from a real scrape.
    assert {"device", "kind"} <= offered["edgegw_events_in_total"]
    assert {"device", "kind"} <= offered["edgegw_events_out_total"]
    assert {"upstream"} <= offered["edgegw_upstream_backlog_events"]
    assert {"reason"} <= offered["edgegw_events_dropped_total"]
    assert {"device", "state"} <= offered["edgegw_device_state"]
    assert "edgegw_loop_lag_max_seconds" in offered
