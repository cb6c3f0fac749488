"""The ble driver as the gateway runs it (drivers.testing): replaying the shipped capture and damaged ones
from real files, and scanning through bleak's real BleakScanner with only its platform backend replaced
(tests/drivers/blefake.py): shared adapters, passive or active, filters, duplicates, bind keys."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers import ble, interfaces
from drivers.ble import (
    ADVERTS_SUPPRESSED,
    ADVERTS_UNKNOWN,
    BTHOME_REPLAYED,
    REPLAY_ENDED,
    REPLAY_LINES_SKIPPED,
    BleDriver,
    BleOptions,
)
from drivers.counters import DECODE_ERRORS
from drivers.errors import ConfigurationError, ConnectionLost
from drivers.kinds import BLE_ADVERT, DEVICE_STATUS
from drivers.testing import Harness, running
from firmware_sim import ble as sim
from gateway.config import ConfigError, load_config
from protocols import ble_adverts
from protocols.ble_adverts import (
    BTHOME_NO_KEY,
    BTHOME_UUID,
    Advert,
    advert_from_json,
    advert_to_json,
    encode_bthome,
    encrypt_bthome,
)
from protocols.errors import DecodeError
from tests.drivers.blefake import Air, FakeScanner

pytestmark = pytest.mark.timeout(60)

HEAD = (
    "gateway: {id: gw}\nupstream: {mqtt: {url: 'mqtt://127.0.0.1:1883'}}\nbuffer: {path: buf.db}\ndevices:\n"
)
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "examples" / "ble-adverts.jsonl"


@pytest.fixture
def air(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Air]]:
    Air.reset()
    monkeypatch.setattr(ble, "SCANNER_BACKEND", FakeScanner)
    yield Air
    Air.reset()


@asynccontextmanager
async def devices(**options: dict[str, Any]) -> AsyncIterator[Harness]:
    makers = {
        name: (lambda name=name, opts=opts: BleDriver(name, BleOptions.model_validate(opts)))
        for name, opts in options.items()
    }
    async with running(makers) as run:
        yield run


def adverts(run: Harness, device: str | None = None) -> list[dict[str, Any]]:
    return run.data(BLE_ADVERT, device)


# -- replay ----------------------------------------------------------------------------------------------


async def test_bind_keys_from_a_file_decrypt_like_keys_in_the_config(tmp_path: Path) -> None:
    keyfile = tmp_path / "bthome.keys"
    keyfile.write_text(
        f"# cabinet sensors\n\n{sim.ADDRESSES['bthome-encrypted']}  {sim.BTHOME_BINDKEY}  # rack 3\n"
    )
    async with devices(
        site={"replay": str(SHIPPED), "replay_speed": 0, "bindkeys_file": str(keyfile)}
    ) as run:
        await run.until_state(REPLAY_ENDED)
        got = adverts(run)
    [sealed] = [a for a in got if a["address"] == sim.ADDRESSES["bthome-encrypted"]]
    assert sealed["values"]["temperature"] == 25.06 and sealed["values"]["humidity"] == 50.55

    secret = "0123456789abcdef0123456789ABCDEF"
    keyfile.write_text(f"{sim.ADDRESSES['bthome']} {secret}\nAA:BB:CC:DD:EE:FF {secret[:-1]}\n")
    with pytest.raises(ValidationError) as caught:
        BleOptions.model_validate({"replay": str(SHIPPED), "bindkeys_file": str(keyfile)})
    assert f"{keyfile}:2: not an `ADDRESS KEY` line" in str(caught.value)
    assert secret[:-1] not in str(caught.value)  # a key is never shown
    keyfile.write_text(f"{sim.ADDRESSES['bthome']} {secret}\n")
    checked = BleOptions.model_validate({"replay": str(SHIPPED), "bindkeys_file": str(keyfile)})
    keyfile.unlink()  # gone between the check and the start: the device stops, saying why
    with pytest.raises(ConfigurationError, match="bindkeys_file: cannot read"):
        BleDriver("gate-ble", checked)
    keyfile.write_text(f"{sim.ADDRESSES['bthome']} {secret}\n")
    with pytest.raises(ValidationError, match="in both bindkeys and bindkeys_file"):
        BleOptions.model_validate(
            {
                "replay": str(SHIPPED),
                "bindkeys_file": str(keyfile),
                "bindkeys": {sim.ADDRESSES["bthome"]: secret},
            }
        )


async def test_the_shipped_capture_decodes_every_format() -> None:
    keys = {sim.ADDRESSES["bthome-encrypted"]: sim.BTHOME_BINDKEY}
    async with devices(
        site={"replay": str(SHIPPED), "replay_speed": 0, "raw": True, "bindkeys": keys}
    ) as run:
        await run.until_state(REPLAY_ENDED)
        got = adverts(run)
        counters = run.counters()
    formats = [a["format"] for a in got]
    assert set(formats) == {
        "bthome",
        "ruuvi",
        "ibeacon",
        "eddystone-uid",
        "eddystone-url",
        "eddystone-tlm",
        "raw",
    }
    by_address = {a["address"]: a for a in got}
    plain = by_address[sim.ADDRESSES["bthome"]]
    assert plain["values"] == {"temperature": 25.0, "humidity": 50.55}
    assert plain["units"] == {"temperature": "°C", "humidity": "%"} and plain["name"] == "DIY-sensor"
    sealed = by_address[sim.ADDRESSES["bthome-encrypted"]]
    assert sealed["values"]["temperature"] == 25.06 and sealed["values"]["humidity"] == 50.55
    ruuvi = [a for a in got if a["format"] == "ruuvi"]
    assert len(ruuvi) == 4  # four payloads from one tag: each changed, none suppressed
    assert ruuvi[0]["values"]["pressure"] == 1000.44 and ruuvi[0]["units"]["pressure"] == "hPa"
    assert ruuvi[3]["values"] == {}  # the "not available" vector: nothing made up
    (ibeacon,) = [a for a in got if a["format"] == "ibeacon"]
    assert (ibeacon["uuid"], ibeacon["major"], ibeacon["minor"], ibeacon["tx_power"]) == (
        "426c7565-4368-6172-6d42-6561636f6e73",
        3838,
        4949,
        -59,
    )
    (tlm,) = [a for a in got if a["format"] == "eddystone-tlm"]
    assert tlm["address"] == ibeacon["address"] and tlm["values"]["voltage"] == 3.07
    urls = sorted(a["url"] for a in got if a["format"] == "eddystone-url")
    assert urls == ["https://goo.gl/Aq18zF", "https://goo.gl/S6zT6P"]
    (raw,) = [a for a in got if a["format"] == "raw"]
    assert raw["manufacturer_data"] == {"89": "0102a0b0"} and raw["values"] == {}
    assert counters.get(DECODE_ERRORS, 0) == 0
    (ended,) = [s for s in run.statuses() if s["state"] == REPLAY_ENDED]
    assert ended["adverts"] == len(sim.lines()) and ended["lines_skipped"] == 0


async def test_without_raw_and_without_the_key_nothing_is_made_up() -> None:
    async with devices(site={"replay": str(SHIPPED), "replay_speed": 0}) as run:
        await run.until_state(REPLAY_ENDED)
        got, counters = adverts(run), run.counters()
    assert "raw" not in {a["format"] for a in got}
    assert counters[ADVERTS_UNKNOWN] == 1
    assert sim.ADDRESSES["bthome-encrypted"] not in {a["address"] for a in got}
    assert counters[BTHOME_NO_KEY] == 1 and counters[DECODE_ERRORS] == 1


async def test_malformed_replay_lines_are_skipped_counted_and_located(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = sim.lines()
    capture = tmp_path / "damaged.jsonl"
    capture.write_text(
        "\n".join(
            [
                good[0],
                "{not json",
                '{"address": "A4:C1:38:0B:7E:09", "rssi": "loud"}',
                "",
                good[1],
                '{"address": "A4:C1:38:0B:7E:09", "rssi": -50, "service_data": {"x": "zz"}}',
                "[1, 2]",
                good[3],
            ]
        )
        + "\n"
    )
    with caplog.at_level(logging.WARNING):
        async with devices(cab={"replay": str(capture), "replay_speed": 0}) as run:
            await run.until_state(REPLAY_ENDED)
            got, counters = adverts(run), run.counters()
    assert [a["address"] for a in got] == [
        sim.ADDRESSES["bthome"],
        sim.ADDRESSES["bthome-objects"],
        sim.ADDRESSES["ruuvi"],
    ]
    assert counters[REPLAY_LINES_SKIPPED] == 4
    located = [r.getMessage() for r in caplog.records if "line skipped" in r.getMessage()]
    assert [m.split(": ")[0] for m in located] == [f"{capture}:{n}" for n in (2, 3, 6, 7)]


async def test_a_looped_replay_repeats_and_duplicates_are_suppressed_within_min_interval(
    tmp_path: Path,
) -> None:
    one = Advert(
        "A4:C1:38:0B:7E:01", -60, "DIY-sensor", service_data={BTHOME_UUID: bytes.fromhex("4002c40903bf13")}
    )
    capture = tmp_path / "one.jsonl"
    capture.write_text(advert_to_json(one) + "\n")
    async with devices(
        quiet={"replay": str(capture), "replay_speed": 0, "replay_loop": True},
        chatty={"replay": str(capture), "replay_speed": 0, "replay_loop": True, "min_interval_s": 0},
    ) as run:
        await run.until_events(BLE_ADVERT, 5, device="chatty")
        await run.until(
            "quiet suppresses repeats", lambda: run.counters("quiet").get(ADVERTS_SUPPRESSED, 0) >= 5
        )
        quiet = adverts(run, "quiet")
    assert len(quiet) == 1  # the same payload, within 10 s: once


async def test_filters_and_formats(tmp_path: Path) -> None:
    async with devices(
        beacons={"replay": str(SHIPPED), "replay_speed": 0, "formats": ["ibeacon", "eddystone-url"]},
        ruuvi={"replay": str(SHIPPED), "replay_speed": 0, "manufacturer_ids": [1177]},
        named={"replay": str(SHIPPED), "replay_speed": 0, "names": ["DIY-*"]},
        one={"replay": str(SHIPPED), "replay_speed": 0, "addresses": ["cb:b8:33:4c:88:4f"]},
    ) as run:
        await run.until_state(REPLAY_ENDED, 4)
    assert {a["format"] for a in adverts(run, "beacons")} == {"ibeacon", "eddystone-url"}
    assert {a["format"] for a in adverts(run, "ruuvi")} == {"ruuvi"}
    assert {a["name"] for a in adverts(run, "named")} == {"DIY-sensor"}
    assert {a["address"] for a in adverts(run, "one")} == {"CB:B8:33:4C:88:4F"}


def test_config_shapes_and_the_replay_path_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "adverts.jsonl").write_text(SHIPPED.read_text())
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(
        HEAD + "  - {name: gate-ble, driver: ble, replay: adverts.jsonl}\n"
        "  - {name: hall-ble, driver: ble, adapter: hci0}\n"
    )
    config = load_config(gateway)
    replayed, scanned = (d.options for d in config.devices)
    assert isinstance(replayed, BleOptions) and replayed.replay == tmp_path / "adverts.jsonl"
    assert isinstance(scanned, BleOptions) and scanned.adapter == "hci0" and scanned.replay is None
    gateway.write_text(
        HEAD + "  - {name: gate-ble, driver: ble, replay: missing.jsonl}\n"
        "  - {name: bad-ble, driver: ble, adapter: hci0, bindkeys: {'54:48:E6:8F:80:A5': 'nothex'}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    text = str(caught.value)
    assert f"{gateway}:5" in text and "replay" in text and "missing.jsonl" in text
    assert f"{gateway}:6" in text and "bindkeys" in text and "nothex" not in text  # a secret is never shown
    with pytest.raises(ValidationError, match=r"adapter .* or replay"):
        BleOptions.model_validate({})


# -- scanning through bleak --------------------------------------------------------------------------------


async def test_one_scanner_per_adapter_shared_by_its_devices(air: type[Air]) -> None:
    async with devices(
        cabinet={"adapter": "hci0", "manufacturer_ids": [1177]},
        gate={"adapter": "hci0", "formats": ["ibeacon"]},
        other={"adapter": "hci1"},
    ) as run:
        await run.until_state("connected", 3)
        assert len(air.listening()) == 2 and {s.adapter for s in air.listening()} == {"hci0", "hci1"}
        assert {s.mode for s in air.listening()} == {"passive"}  # the platform allows it: passive
        assert set(interfaces.interfaces()) == {"bluetooth:hci0", "bluetooth:hci1"}
        for advert in sim.adverts():
            assert air.advertise(advert) == 1
        await run.until_events(BLE_ADVERT, 4, device="cabinet")
        await run.until_events(BLE_ADVERT, 1, device="gate")
        assert run.data(BLE_ADVERT, "other") == []
    assert [a["format"] for a in adverts(run, "gate")] == ["ibeacon"]
    assert {a["format"] for a in adverts(run, "cabinet")} == {"ruuvi"}
    assert len(air.stopped) == 2  # the last device out stopped each scanner


async def test_active_scanning_where_passive_is_not_available(air: type[Air]) -> None:
    air.reset(passive_supported=False)
    async with devices(gate={"adapter": "hci0"}) as run:
        await run.until_state("connected")
        (scanner,) = air.listening()
        assert scanner.mode == "active"
        assert "active scanning" in run.statuses()[0]["detail"]
        air.advertise(sim.adverts()[0])
        await run.until_events(BLE_ADVERT)
    assert adverts(run)[0]["values"] == {"temperature": 25.0, "humidity": 50.55}


async def test_devices_on_one_adapter_must_agree_on_the_mode(air: type[Air]) -> None:
    async with devices(a={"adapter": "hci0", "scanning_mode": "passive"}) as run:
        await run.until_state("connected")
        async with devices(b={"adapter": "hci0", "scanning_mode": "active"}) as other:
            await other.until_state("failed")
            (failed,) = [s for s in other.statuses() if s["state"] == "failed"]
            assert "scanning_mode" in failed["reason"] and "a:" in failed["reason"]


async def test_a_scanner_that_cannot_start_is_retried(air: type[Air]) -> None:
    air.reset(passive_supported=False)
    async with devices(gate={"adapter": "hci0", "scanning_mode": "passive"}) as run:
        await run.until_state("disconnected", 2)
    reasons = [s["reason"] for s in run.statuses() if s["state"] == "disconnected"]
    assert all("bluetooth hci0: cannot scan" in r and "NotSupported" in r for r in reasons)


async def test_bind_keys_decrypt_scanned_bthome(air: type[Air]) -> None:
    sealed = sim.adverts()[2]
    keys = {sealed.address: sim.BTHOME_BINDKEY}
    async with devices(keyed={"adapter": "hci0", "bindkeys": keys}, keyless={"adapter": "hci0"}) as run:
        await run.until_state("connected", 2)
        air.advertise(sealed)
        await run.until_events(BLE_ADVERT, 1, device="keyed")
        await run.until("keyless counts it", lambda: run.counters("keyless").get(BTHOME_NO_KEY, 0) == 1)
    assert adverts(run, "keyed")[0]["values"]["temperature"] == 25.06
    assert adverts(run, "keyless") == []


# -- bad input, generated --------------------------------------------------------------------------------

GARBAGE = st.one_of(
    st.text(max_size=80).filter(lambda t: "\n" not in t and "\r" not in t),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(
                ["address", "rssi", "name", "manufacturer_data", "service_data", "ts", "tx_power"]
            ),
            st.none()
            | st.integers(-200, 70000)
            | st.text(max_size=12)
            | st.dictionaries(st.text(max_size=4), st.text(max_size=8)),
            max_size=7,
        ),
    ),
)
SOME_ADVERTS = st.lists(st.sampled_from(sim.lines()) | GARBAGE, max_size=25)


@given(SOME_ADVERTS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_replay_file_plays_to_its_end_skipping_and_counting_what_is_no_advert(
    tmp_path: Path, lines: list[str]
) -> None:
    capture = tmp_path / "generated.jsonl"
    capture.write_text("".join(line + "\n" for line in lines))
    good = 0
    # Blank as a capture file's bytes are blank (ASCII whitespace): str.strip() would also take the
    # separators \x1c-\x1f for blank, which a replayed capture rightly reports as damaged lines.
    for line in lines:
        if not line.encode().strip():
            continue
        try:
            advert_from_json(line)
        except DecodeError:
            continue
        good += 1

    async def play() -> tuple[dict[str, Any], dict[str, int]]:
        async with devices(fuzz={"replay": str(capture), "replay_speed": 0, "raw": True}) as run:
            await run.until_state(REPLAY_ENDED)
            (ended,) = [s for s in run.statuses() if s["state"] == REPLAY_ENDED]
            return ended, run.counters()

    ended, counters = asyncio.run(play())
    assert ended["adverts"] == good
    assert ended["lines_skipped"] == counters.get(REPLAY_LINES_SKIPPED, 0)
    assert good + ended["lines_skipped"] == sum(1 for line in lines if line.encode().strip())


def test_the_scanner_buffer_is_bounded_and_counts_what_it_drops() -> None:
    source = ble.ScannerSource(capacity=3)
    for advert in sim.adverts()[:5]:
        source.put(advert)
    assert source.dropped == 2

    async def drain() -> list[str]:
        got = [(await source.receive()).address for _ in range(3)]
        source.close()
        with pytest.raises(ConnectionLost):
            await source.receive()
        return got

    assert asyncio.run(drain()) == [a.address for a in sim.adverts()[:3]]


async def test_a_silent_adapter_has_its_scanner_restarted_for_every_device(air: type[Air]) -> None:
    quick = {"adapter": "hci0", "silence_restart_s": 0.05}
    async with devices(a=quick, b=quick) as run:
        await run.until("the scanner started again", lambda: len(air.started) >= 2)
        await run.until_state("disconnected", 2)
    reasons = {s["reason"] for s in run.statuses() if s["state"] == "disconnected"}
    assert any("bluetooth hci0: nothing heard for 0.05 s" in r for r in reasons)
    assert air.stopped[0] is air.started[0]  # the silent scanner was stopped before the next one started


async def test_a_quiet_device_on_a_busy_adapter_is_not_restarted(air: type[Air]) -> None:
    async with devices(
        picky={"adapter": "hci0", "addresses": ["00:00:00:00:00:01"], "silence_restart_s": 0.5},
        busy={"adapter": "hci0", "min_interval_s": 0},
    ) as run:
        await run.until_state("connected", 2)
        # the adapter keeps hearing (every 20 ms) for three of the picky device's silences
        for _ in range(75):
            air.advertise(sim.adverts()[0])
            await asyncio.sleep(0.02)
        await run.until_events(BLE_ADVERT, 75, device="busy")
        assert len(air.started) == 1 and "disconnected" not in run.states()
    assert adverts(run, "picky") == []


async def test_an_encrypted_bthome_advert_sent_again_is_not_reported(air: type[Air]) -> None:
    sealed = sim.adverts()[2]
    mac = bytes.fromhex(sealed.address.replace(":", ""))
    key = bytes.fromhex(sim.BTHOME_BINDKEY)
    body = encode_bthome([(0x02, 2506), (0x03, 5055)])

    def with_counter(n: int) -> Advert:
        data = encrypt_bthome(body, mac=mac, bindkey=key, counter=n)
        return Advert(sealed.address, -60, None, service_data={BTHOME_UUID: data})

    async with devices(keyed={"adapter": "hci0", "bindkeys": {sealed.address: sim.BTHOME_BINDKEY}}) as run:
        await run.until_state("connected")
        for counter in (100, 101, 100, 99, 3, 4):  # two replays, then the sensor counting again from 0
            air.advertise(with_counter(counter))
        await run.until_events(BLE_ADVERT, 4)
        await run.until("the replays counted", lambda: run.counters().get(BTHOME_REPLAYED, 0) == 2)
    assert [a["values"]["encryption_counter"] for a in adverts(run)] == [100, 101, 3, 4]


async def test_a_replay_keeps_the_recorded_spacing_divided_by_its_speed(tmp_path: Path) -> None:
    plain = [sim.adverts()[i] for i in (0, 1, 3)]  # BTHome, BTHome, Ruuvi: none needs a key
    recorded = [replace(a, ts=1000.0 + 2.0 * i) for i, a in enumerate(plain)]  # 2 s apart
    capture = tmp_path / "spaced.jsonl"
    capture.write_text("".join(advert_to_json(a) + "\n" for a in recorded))
    async with devices(paced={"replay": str(capture), "replay_speed": 20}) as run:
        await run.until_state(REPLAY_ENDED)
    stamps = [e.ts for e in run.of(BLE_ADVERT)]
    (connected,) = [e.ts for e in run.of(DEVICE_STATUS) if e.data["state"] == "connected"]
    assert len(stamps) == 3
    # the i-th advert is played no sooner than i x 2 s / 20 after the replay began (it began after the
    # device reported connected): a lower bound, so never a race
    assert all(stamp - connected >= i * 0.1 - 0.005 for i, stamp in enumerate(stamps))


async def test_a_beacon_rotating_frames_is_deduplicated_frame_by_frame(tmp_path: Path) -> None:
    url, uid = (sim.adverts()[i] for i in (8, 10))  # Eddystone URL and UID frames
    beacon = "C3:0A:55:10:00:09"
    rotation = [replace(url, address=beacon), replace(uid, address=beacon)] * 4
    capture = tmp_path / "rotating.jsonl"
    capture.write_text("".join(advert_to_json(a) + "\n" for a in rotation))
    async with devices(gate={"replay": str(capture), "replay_speed": 0}) as run:
        await run.until_state(REPLAY_ENDED)
    assert [a["format"] for a in adverts(run)] == ["eddystone-url", "eddystone-uid"]
    assert run.counters()[ADVERTS_SUPPRESSED] == 6


def test_devices_on_one_adapter_with_different_modes_are_refused_at_check_time(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(
        HEAD
        + "  - {name: cab-a, driver: ble, adapter: hci0, scanning_mode: passive}\n"
        + "  - {name: cab-b, driver: ble, adapter: hci0, scanning_mode: active}\n"
        + "  - {name: cab-c, driver: ble, adapter: hci1, scanning_mode: active}\n"
        + "  - {name: cab-d, driver: ble, replay: adverts.jsonl}\n"
    )
    (tmp_path / "adverts.jsonl").write_text(SHIPPED.read_text())
    with pytest.raises(ConfigError) as caught:
        load_config(gateway)
    (problem,) = caught.value.problems
    assert f"{problem}".startswith(f"{gateway}:6")
    assert "scanning_mode" in str(problem) and "cab-a" in str(problem) and "hci0" in str(problem)


def test_a_replay_named_in_a_devices_file_is_relative_to_that_file(tmp_path: Path) -> None:
    (tmp_path / "devices.d").mkdir()
    (tmp_path / "devices.d" / "gate.yaml").write_text(
        "{name: gate-ble, driver: ble, replay: captures/gate.jsonl}\n"
    )
    (tmp_path / "devices.d" / "captures").mkdir()
    (tmp_path / "devices.d" / "captures" / "gate.jsonl").write_text(SHIPPED.read_text())
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text(HEAD.replace("devices:\n", "devices_dir: devices.d\n"))
    (device,) = load_config(gateway).devices
    assert isinstance(device.options, BleOptions)
    assert device.options.replay == tmp_path / "devices.d" / "captures" / "gate.jsonl"


async def test_a_decoder_bug_costs_one_advert_not_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = ble_adverts.decode

    def flaky(advert: Advert, bindkey: bytes | None = None) -> Any:
        if advert.address == sim.ADDRESSES["bthome-objects"]:
            raise IndexError("a bug")
        return real(advert, bindkey)

    monkeypatch.setattr(ble, "decode", flaky)
    with caplog.at_level(logging.ERROR):
        async with devices(site={"replay": str(SHIPPED), "replay_speed": 0}) as run:
            await run.until_state(REPLAY_ENDED)
    assert run.counters()[ble.DECODER_FAILURES] == 1 and "a decoder failed" in caplog.text
    assert sim.ADDRESSES["bthome"] in {a["address"] for a in adverts(run)}
    assert sim.ADDRESSES["ruuvi"] in {a["address"] for a in adverts(run)}  # after it: the device went on
    assert "disconnected" not in run.states()
