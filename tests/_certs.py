"""Certificates made in the test process (``cryptography``): a CA, server certificates
for a logical name, client certificates for mTLS. Nothing is read from disk.

Keys are ECDSA P-256 (fast to generate); certificates are valid from an hour ago for a
day. ``Pki()`` is one CA; two ``Pki()`` objects are two unrelated CAs (the "wrong CA").
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyPair:
    """PEM bytes of a certificate and its private key."""

    cert: bytes
    key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1))


class Pki:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str = "lbclient test CA") -> None:
        self._key = _key()
        self._name = _name(name)
        builder = (x509.CertificateBuilder().subject_name(self._name)
                   .issuer_name(self._name).public_key(self._key.public_key())
                   .serial_number(x509.random_serial_number())
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                       crl_sign=True, encipher_only=False, decipher_only=False), True))
        self.cert = _validity(builder).sign(self._key, hashes.SHA256())
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, common_name: str, sans: list[x509.GeneralName],
               usage: x509.ObjectIdentifier) -> KeyPair:
        key = _key()
        builder = (x509.CertificateBuilder().subject_name(_name(common_name))
                   .issuer_name(self._name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        cert = _validity(builder).sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))

    def server(self, *dns_names: str, ips: tuple[str, ...] = ()) -> KeyPair:
        """A server certificate whose SANs are ``dns_names`` (and ``ips``)."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(dns_names[0] if dns_names else "server", sans,
                           ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, common_name: str = "client") -> KeyPair:
        """A client certificate (for mTLS)."""
        return self._issue(common_name, [x509.DNSName(common_name)],
                           ExtendedKeyUsageOID.CLIENT_AUTH)
