"""Development certificates (bin/gen_certs): one CA per plane, each plane's server certificate and client
certificate issued by its own CA, a revoked business client and a CRL per plane, written into the layout the
default conf/config.json points at. Keys are written 0600. A client certificate opens only its own plane: the
business client is refused at the TLS handshake of the management and metrics planes, and so on.

    security/ca/ca.pem  management_ca.pem  metrics_ca.pem      the three CAs (business, management, metrics)
    security/ca/private/ca.key.pem  management_ca.key.pem  metrics_ca.key.pem   their keys (to issue more certs)
    security/certs/server.pem   security/keys/server.key.pem   business plane (key encrypted with the passphrase
    security/pass/key_pwd.txt                                  in this file)
    security/certs/management/…  security/keys/management/…  security/pass/management/key_pwd.txt
    security/certs/metrics/…     security/keys/metrics/…     security/pass/metrics/key_pwd.txt
    security/certs/server_crl.pem  security/management/certs/server_crl.pem  security/metrics/certs/server_crl.pem
    security/client/client.pem  client.key.pem                 business client (curl / the openai client)
    security/client/management.pem  management.key.pem         management client (/health, /v1/status, /v1/config)
    security/client/metrics.pem  metrics.key.pem               metrics client (/metrics, a Prometheus scraper)
    security/client/revoked.pem revoked.key.pem                a business client certificate listed in the CRL

The helpers (make_ca, issue_cert, make_crl, write_*) are reused by the tests to build broken sets.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key(key_type: str = "ec"):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Issued:
    cert: x509.Certificate
    key: object


def make_ca(cn: str = "mindie_like dev CA", *, key_type: str = "ec", days: int = 3650) -> Issued:
    key = new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue_cert(ca: Issued, cn: str, *, server: bool, hosts: Iterable[str] = DEFAULT_HOSTS, key_type: str = "ec",
               not_before: Optional[dt.datetime] = None, not_after: Optional[dt.datetime] = None,
               days: int = 825) -> Issued:
    key = new_key(key_type)
    now = _now()
    nb = not_before or now - dt.timedelta(minutes=5)
    na = not_after or now + dt.timedelta(days=days)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
    if server:
        sans = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def make_crl(ca: Issued, revoked: Iterable[x509.Certificate], *, days: int = 3650) -> x509.CertificateRevocationList:
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days)))
    for c in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                                      .revocation_date(now - dt.timedelta(minutes=1)).build())
    return b.sign(ca.key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def write_cert(path: Path, *certs: x509.Certificate) -> Path:
    return _write(Path(path), b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644)


def write_key(path: Path, key, password: Optional[bytes] = None) -> Path:
    enc = (serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    return _write(Path(path), data, 0o600)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> Path:
    return _write(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644)


def write_secret(path: Path, text: str) -> Path:
    return _write(Path(path), text.encode() + b"\n", 0o600)


PLANES = {  # plane -> (cert, key, passphrase file, CRL file, CA file name, client cert file stem)
    "business": ("certs/server.pem", "keys/server.key.pem", "pass/key_pwd.txt", "certs/server_crl.pem", "ca.pem",
                 "client"),
    "management": ("certs/management/server.pem", "keys/management/server.key.pem",
                   "pass/management/key_pwd.txt", "management/certs/server_crl.pem", "management_ca.pem",
                   "management"),
    "metrics": ("certs/metrics/server.pem", "keys/metrics/server.key.pem", "pass/metrics/key_pwd.txt",
                "metrics/certs/server_crl.pem", "metrics_ca.pem", "metrics"),
}


def generate(home: Path, *, key_type: str = "ec", hosts: Iterable[str] = DEFAULT_HOSTS,
             encrypt_keys: bool = True) -> dict[str, Path]:
    """Writes the whole dev set under `home`/security and returns the notable paths: `<plane>_ca`,
    `<plane>_cert`/`_key`/`_crl` (server side), `<plane>_client_cert`/`_key`, and `ca`/`client_cert`/`client_key`
    (the business plane's, what curl and the openai client use), `revoked_cert`/`revoked_key`."""
    sec = Path(home) / "security"
    out: dict[str, Path] = {}
    for plane, (cert_p, key_p, pwd_p, crl_p, ca_name, client_stem) in PLANES.items():
        ca = make_ca(f"mindie_like dev {plane} CA", key_type=key_type)
        server = issue_cert(ca, f"mindie_like {plane} server", server=True, hosts=list(hosts), key_type=key_type)
        client = issue_cert(ca, f"mindie_like {plane} client", server=False, key_type=key_type)
        revoked = []
        if plane == "business":
            rev = issue_cert(ca, "mindie_like revoked client", server=False, key_type=key_type)
            revoked.append(rev.cert)
            out["revoked_cert"] = write_cert(sec / "client/revoked.pem", rev.cert)
            out["revoked_key"] = write_key(sec / "client/revoked.key.pem", rev.key)
        write_key(sec / "ca/private" / ca_name.replace(".pem", ".key.pem"), ca.key)
        out[f"{plane}_ca"] = write_cert(sec / "ca" / ca_name, ca.cert)
        password = secrets.token_urlsafe(24) if encrypt_keys else None
        if password:
            write_secret(sec / pwd_p, password)
        elif (sec / pwd_p).exists():
            (sec / pwd_p).unlink()
        out[f"{plane}_cert"] = write_cert(sec / cert_p, server.cert)
        out[f"{plane}_key"] = write_key(sec / key_p, server.key, password.encode() if password else None)
        out[f"{plane}_crl"] = write_crl(sec / crl_p, make_crl(ca, revoked))
        out[f"{plane}_client_cert"] = write_cert(sec / f"client/{client_stem}.pem", client.cert)
        out[f"{plane}_client_key"] = write_key(sec / f"client/{client_stem}.key.pem", client.key)
    out["ca"] = out["business_ca"]
    out["client_cert"] = out["business_client_cert"]
    out["client_key"] = out["business_client_key"]
    return out


def present(home: Path) -> bool:
    sec = Path(home) / "security"
    return all((sec / p[0]).is_file() and (sec / p[1]).is_file() for p in PLANES.values()) and \
        (sec / "client/client.pem").is_file()
