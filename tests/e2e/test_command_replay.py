"""The signed command path against replays (issue 15, security): a captured signed request sent again is not
run again, cannot be re-targeted by editing its id, args or ts (the signature covers them), and once older
than max_age_s it is expired; a config whose id memory is shorter than max_age_s is refused with hmac on.
Same site as tests/e2e/test_commands.py: pymodbus's real server, a private mosquitto, a plain paho client."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config
from tests.broker import Mosquitto
from tests.e2e.test_commands import CMD, canonical, holding, publish, site, write_config

pytestmark = pytest.mark.timeout(120)

KEY = b"a shared key for the replay test"


def signed(rid: str, args: dict[str, Any], ts: float, key: bytes = KEY) -> dict[str, Any]:
    mac = hmac.new(key, canonical(rid, "write", args, ts, CMD), hashlib.sha256).hexdigest()
    return {"id": rid, "command": "write", "args": args, "ts": ts, "hmac": mac}


async def test_a_captured_signed_request_replayed_never_runs_twice(tmp_path: Path, broker: Mosquitto) -> None:
    (tmp_path / "cmd.key").write_bytes(KEY)
    async with site(tmp_path, broker, commands="      hmac_key_file: cmd.key\n") as s:
        ts = float(int(time.time()))
        captured = signed("r-1", {"point": "vt_ratio", "value": 9}, ts)
        wire = json.dumps(captured)
        publish(broker, CMD, wire)
        [first] = await s.result_for("r-1")
        assert first["status"] == "ok", first
        # the same bytes again (an attacker on the path, or a broker redelivery): answered, not run
        publish(broker, CMD, wire)
        results = await s.result_for("r-1", n=2)
        assert [r["status"] for r in results] == ["ok", "ok"]
        assert results[1]["data"] == results[0]["data"] == {"written": {"vt_ratio": 9}}
        assert s.writes() == {6: 1}
        # edited copies of the captured request: a new id, other args, a fresher ts. The hmac covers them.
        for rid, change in (
            ("r-2", {"id": "r-2"}),
            ("r-1b", {"id": "r-1b", "args": {"point": "vt_ratio", "value": 99}}),
            ("r-3", {"id": "r-3", "ts": ts + 5}),
        ):
            publish(broker, CMD, json.dumps({**captured, **change}))
            [edited] = await s.result_for(rid)
            assert edited["status"] == "refused" and "does not match" in edited["reason"], edited
        # a request captured long ago, signed and never seen here: its age refuses it
        old = signed("r-old", {"point": "vt_ratio", "value": 50}, ts - 3600)
        publish(broker, CMD, json.dumps(old))
        [expired] = await s.result_for("r-old")
        assert expired["status"] == "expired" and "max_age_s 30" in expired["reason"]
        assert s.writes() == {6: 1}
        assert await holding(s.sim.port, 101) == [9]
        assert s.gateway.commands is not None and s.gateway.commands.duplicates == 1


def test_with_hmac_the_id_memory_must_outlast_max_age(tmp_path: Path, broker: Mosquitto) -> None:
    (tmp_path / "cmd.key").write_bytes(KEY)
    commands = "      hmac_key_file: cmd.key\n      dedupe_window: {count: 100, seconds: 5}\n"
    path = write_config(tmp_path, broker, "  []\n", commands)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:" in text and "dedupe_window" in text and "must be >= max_age_s (30)" in text
    # without hmac (an unsigned request can be forged anyway) a short memory stays allowed
    path.write_text(path.read_text().replace("      hmac_key_file: cmd.key\n", ""))
    assert load_config(path).upstream is not None
