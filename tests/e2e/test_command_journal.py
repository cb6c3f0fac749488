"""Command ids survive a restart of the gateway (the journal beside the buffer, and requests acknowledged only
once answered): a request answered, then sent again after a restart, gets its first result and does not run
again; a request whose command was running when the gateway was SIGKILLed is delivered again by the broker
to the restarted gateway and answered once, ``error`` (interrupted, effect unknown), never run twice; a
journal file that is garbage does not stop the gateway. The gateway is a real ``edgegw run`` process, the
meter pymodbus's real server in this process, the broker a private mosquitto."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.modbus import ModbusSimulator, serve_tcp
from tests.broker import Mosquitto, Subscriber
from tests.e2e.harness import GatewayProcess
from tests.e2e.test_commands import CMD, GW, WRITES, holding, meter, publish, request, site, write_config
from tests.gateway.ops_helpers import http_get, samples, value
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

RESULTS = f"edgegw/{GW}/meter/cmd/result"


def writes(sim: ModbusSimulator) -> dict[int, int]:
    return {f: sim.stats.functions[(1, f)] for f in WRITES if sim.stats.functions[(1, f)]}


def results(sub: Subscriber, rid: str) -> list[dict[str, Any]]:
    found = [json.loads(m.payload) for m in sub.snapshot() if m.topic == RESULTS]
    return [r for r in found if r["id"] == rid]


async def started(gw: GatewayProcess, times: int) -> None:
    """Wait until the gateway (started for the ``times``-th time on this log) listens for commands and
    its meter is connected."""
    await gw.start()
    await until(
        f"start {times}: the command service listening",
        lambda: gw.log().count("commands: listening on") >= times,
    )
    await until(
        f"start {times}: the meter connected",
        lambda: gw.log().count("edgegw.device.meter: connected") >= times,
    )


@contextlib.asynccontextmanager
async def gateway_site(
    tmp_path: Path, broker: Mosquitto
) -> AsyncIterator[tuple[ModbusSimulator, GatewayProcess]]:
    """The meter simulated here, and the gateway process (not started) for it; killed at the end."""
    async with serve_tcp("127.0.0.1", 0, {1: "energy-meter"}) as sim:
        config = write_config(
            tmp_path, broker, meter("meter", sim.port, 1, "[write, read]", poll_s=30, timeout_s=8)
        )
        gw = GatewayProcess(config)
        try:
            yield sim, gw
        finally:
            await gw.kill()


async def test_a_request_answered_before_a_restart_is_not_run_again_after_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with gateway_site(tmp_path, broker) as (sim, gw), Subscriber(broker, RESULTS) as sub:
        await started(gw, 1)
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 7}, rid="j-1"))
        await sub.wait_until(lambda _: bool(results(sub, "j-1")), timeout=20)
        assert results(sub, "j-1")[0]["status"] == "ok"
        assert await gw.stop() == 0
        await started(gw, 2)
        assert "1 request id(s) from the journal" in gw.log()
        # the same id again (a resend, with other content): the first result, not a second write
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 8}, rid="j-1"))
        await sub.wait_until(lambda _: len(results(sub, "j-1")) >= 2, timeout=20)
        first, again = results(sub, "j-1")
        assert again["status"] == "ok" and again["data"] == first["data"] == {"written": {"vt_ratio": 7}}
        assert writes(sim) == {6: 1}
        assert await holding(sim.port, 101) == [7]
        # a new id still runs
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 9}, rid="j-2"))
        await sub.wait_until(lambda _: bool(results(sub, "j-2")), timeout=20)
        assert results(sub, "j-2")[0]["status"] == "ok"
        assert writes(sim) == {6: 2}
        assert await gw.stop() == 0


async def test_a_command_cut_off_by_sigkill_is_answered_once_as_interrupted_and_not_run_again(
    tmp_path: Path, broker: Mosquitto
) -> None:
    async with gateway_site(tmp_path, broker) as (sim, gw), Subscriber(broker, RESULTS) as sub:
        await started(gw, 1)
        sim.set_delay(1, 30.0)  # the write lands in the meter, its answer does not come back in time
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 42}, rid="k-1"))
        await until("the write reached the meter", lambda: writes(sim) == {6: 1})
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        assert await gw.wait() == -signal.SIGKILL
        assert results(sub, "k-1") == []  # never answered, so never acknowledged to the broker
        sim.set_delay(1, 0.0)
        await started(gw, 2)
        # the broker delivers the unacknowledged request again to the gateway's session; the journal answers
        await sub.wait_until(lambda _: bool(results(sub, "k-1")), timeout=20)
        [result] = results(sub, "k-1")
        assert result["status"] == "error" and "interrupted" in result["reason"], result
        assert "effect on the device is unknown" in result["reason"]
        # sent again by hand: the same answer, still not run
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 42}, rid="k-1"))
        await sub.wait_until(lambda _: len(results(sub, "k-1")) >= 2, timeout=20)
        assert [r["reason"] for r in results(sub, "k-1")] == [result["reason"]] * 2
        assert writes(sim) == {6: 1}
        assert await gw.stop() == 0
        # Both deliveries were acknowledged once answered, the redelivery too, though it came right behind
        # the CONNACK: the next session gets nothing of k-1 again. A new request queued behind anything the
        # broker still held is the mark that all of it has come.
        await started(gw, 3)
        publish(broker, CMD, request("read", {"points": ["vt_ratio"]}, rid="k-2"))
        await sub.wait_until(lambda _: bool(results(sub, "k-2")), timeout=20)
        assert len(results(sub, "k-1")) == 2
        assert await gw.stop() == 0
    assert "1 interrupted by the last stop" in gw.log()


async def test_a_garbage_journal_does_not_stop_the_gateway(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "buffer.db.commands"
    journal.write_bytes(b"this is no SQLite database, just bytes\n" * 100)
    caplog.set_level(logging.WARNING, logger="edgegw.commands")
    async with site(tmp_path, broker) as s:
        service = s.gateway.commands
        assert service is not None
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 5}, rid="g-1"))
        [result] = await s.result_for("g-1")
        assert result["status"] == "ok", result
        publish(broker, CMD, request("write", {"point": "vt_ratio", "value": 6}, rid="g-1"))
        await s.result_for("g-1", n=2)
        assert s.writes() == {6: 1}
        assert service.stats().journal_faults == 1
        assert service.journal.usable  # set aside and started anew
        assert s.gateway.metrics is not None  # the fault is counted where an operator looks
        code, body = await http_get(s.gateway.metrics.port, "/metrics")
        assert code == 200 and value(samples(body.decode()), "edgegw_command_journal_faults_total") == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"the id journal {journal} cannot be opened" in logged
    assert "set aside" in logged
    assert (tmp_path / "buffer.db.commands.corrupt").read_bytes().startswith(b"this is no SQLite")
