"""A throwaway public-key infrastructure for TLS tests, made with the ``cryptography`` package: a CA, an
unrelated CA, a broker certificate for 127.0.0.1, and client certificates (valid, expired, signed by the
other CA), each written as PEM files. The client key is also written encrypted, with its password."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_PASSWORD = "k3y-pass-for-tests-7f1c"


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    """The client key encrypted with :data:`KEY_PASSWORD`."""
    expired_cert: Path
    expired_key: Path
    stranger_cert: Path
    """A client certificate signed by the other CA."""
    stranger_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str, now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    ca_cert, ca_key = ca
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca = _ca("edgegw test CA", now)
    other = _ca("edgegw unrelated CA", now)
    valid = {"not_before": now - dt.timedelta(hours=1), "not_after": now + dt.timedelta(days=1)}
    server = _leaf("127.0.0.1", ca, server=True, **valid)
    client = _leaf("gateway-1", ca, server=False, **valid)
    expired = _leaf(
        "gateway-expired",
        ca,
        server=False,
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    stranger = _leaf("gateway-stranger", other, server=False, **valid)
    d = directory
    return Pki(
        ca=_write_cert(d / "ca.crt", ca[0]),
        other_ca=_write_cert(d / "other-ca.crt", other[0]),
        server_cert=_write_cert(d / "server.crt", server[0]),
        server_key=_write_key(d / "server.key", server[1]),
        client_cert=_write_cert(d / "client.crt", client[0]),
        client_key=_write_key(d / "client.key", client[1]),
        client_key_encrypted=_write_key(d / "client.enc.key", client[1], KEY_PASSWORD),
        expired_cert=_write_cert(d / "expired.crt", expired[0]),
        expired_key=_write_key(d / "expired.key", expired[1]),
        stranger_cert=_write_cert(d / "stranger.crt", stranger[0]),
        stranger_key=_write_key(d / "stranger.key", stranger[1]),
    )
