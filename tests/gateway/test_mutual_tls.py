"""TLS to the broker, verified by default, and mutual TLS (issue 15, security): a private mosquitto with a
TLS listener that requires a client certificate, and a CA made by the test (tests/pki.py, ``cryptography``).
The right CA and client certificate connect (a plain key, and an encrypted key with its password); a broker
certificate from another CA is refused; a client certificate the broker refuses (none, expired, another
CA's) fails the connection with the TLS alert as the reason, not a bare "closed"."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.event import Event
from gateway.app import forwarder_settings
from gateway.config import load_config
from gateway.delivery.buffer import SqliteBuffer
from gateway.delivery.forwarder import Forwarder
from gateway.delivery.mqtt import MqttConnectError, MqttConnection, TlsOptions
from tests.broker import Mosquitto, Subscriber, TlsListener
from tests.gateway.test_forwarder import bare_connection, running
from tests.pki import KEY_PASSWORD, Pki, make_pki
from tests.waiting import until

TIMEOUT = 20.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki) -> Iterator[Mosquitto]:
    listener = TlsListener(pki.ca, pki.server_cert, pki.server_key, require_certificate=True)
    with Mosquitto(tls=listener) as broker:
        yield broker


def connection(broker: Mosquitto, tls: TlsOptions) -> MqttConnection:
    assert broker.tls_port is not None
    return bare_connection(broker.host, broker.tls_port, f"mtls-{uuid.uuid4().hex[:6]}", tls=tls)


async def test_the_right_ca_and_client_certificate_connect(mtls_broker: Mosquitto, pki: Pki) -> None:
    for tls in (
        TlsOptions(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)),
        TlsOptions(
            ca_file=str(pki.ca),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key_encrypted),
            key_password=KEY_PASSWORD,
        ),
    ):
        conn = connection(mtls_broker, tls)
        await conn.connect()
        assert conn.connected
        await conn.disconnect()


async def test_a_broker_certified_by_another_ca_is_refused(mtls_broker: Mosquitto, pki: Pki) -> None:
    cert, key = str(pki.client_cert), str(pki.client_key)
    for tls in (
        TlsOptions(ca_file=str(pki.other_ca), cert_file=cert, key_file=key),
        TlsOptions(cert_file=cert, key_file=key),  # the system's CAs
    ):
        with pytest.raises(MqttConnectError, match="CERTIFICATE_VERIFY_FAILED") as err:
            await connection(mtls_broker, tls).connect()
        assert "self-signed certificate in certificate chain" in str(err.value)


@pytest.mark.parametrize(
    ("which", "reason", "broker_says"),
    [
        ("none", "CERTIFICATE_REQUIRED", "peer did not return a certificate"),
        ("expired", "CERTIFICATE_EXPIRED", "certificate verify failed"),
        ("stranger", "UNKNOWN_CA", "certificate verify failed"),
    ],
)
async def test_a_client_certificate_the_broker_refuses_fails_with_the_reason(
    mtls_broker: Mosquitto, pki: Pki, which: str, reason: str, broker_says: str
) -> None:
    cert, key = {
        "none": (None, None),
        "expired": (str(pki.expired_cert), str(pki.expired_key)),
        "stranger": (str(pki.stranger_cert), str(pki.stranger_key)),
    }[which]
    conn = connection(mtls_broker, TlsOptions(ca_file=str(pki.ca), cert_file=cert, key_file=key))
    with pytest.raises(MqttConnectError, match=reason) as err:
        await conn.connect()
    assert "closed the connection" in str(err.value)
    assert not conn.connected
    await until(f"the broker logs {broker_says!r}", lambda: broker_says in mtls_broker.log_tail(200), TIMEOUT)


def write_config(tmp_path: Path, url: str, tls: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  id: tls-gw\nbuffer:\n  path: {tmp_path / 'buffer.db'}\n"
        f"upstream:\n  mqtt:\n    url: {url}\n{tls}devices: []\n"
    )
    return path


def test_mqtts_verifies_the_broker_by_default(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "mqtts://broker.example", ""))
    assert config.upstream is not None
    settings = forwarder_settings(config)
    assert settings.tls and not settings.tls_insecure and settings.ca_file is None  # the system's CAs
    assert settings.port == 8883


async def test_a_gateway_configured_with_mutual_tls_forwards_and_a_wrong_ca_logs_why(
    tmp_path: Path, mtls_broker: Mosquitto, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """From the YAML (key password from a file) through the forwarder to a subscriber on the plain port."""
    url = f"mqtts://127.0.0.1:{mtls_broker.tls_port}"
    (tmp_path / "key.pw").write_text(KEY_PASSWORD + "\n")
    tls = (
        f"    tls:\n      ca_file: {pki.ca}\n      cert_file: {pki.client_cert}\n"
        f"      key_file: {pki.client_key_encrypted}\n      key_password_file: key.pw\n"
        "    reconnect: {initial_s: 0.05, max_s: 0.2}\n"
    )
    buffer = await SqliteBuffer.open(tmp_path / "buffer.db")
    try:
        wrong = load_config(write_config(tmp_path, url, tls.replace(str(pki.ca), str(pki.other_ca))))
        assert wrong.upstream is not None
        refused = Forwarder(buffer, forwarder_settings(wrong))
        with caplog.at_level(logging.WARNING, logger="gateway"):
            async with running(refused):
                await until(
                    "the verify failure logged", lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, TIMEOUT
                )
        assert refused.stats().connects == 0
        config = load_config(write_config(tmp_path, url, tls))
        assert config.upstream is not None
        settings = forwarder_settings(config)
        assert settings.key_password == KEY_PASSWORD and KEY_PASSWORD not in repr(settings)
        await buffer.append(
            [Event("reader-1", "rfid.read", 1_700_000_000.0 + i, {"i": i}) for i in range(20)]
        )
        async with Subscriber(mtls_broker, "edgegw/tls-gw/reader-1/#") as sub:
            forwarder = Forwarder(buffer, settings)
            async with running(forwarder):
                await sub.wait_count(20, TIMEOUT)
                await until("all acknowledged", lambda: buffer.stats().depth == 0, TIMEOUT)
        assert forwarder.stats().connects == 1
    finally:
        await buffer.close()
