"""Server-side TLS contexts of the three planes, with mutual TLS.

`server_ssl_context(loaded, plane)` checks every file first and raises ConfigError with one clear line for a
missing or unreadable file, a key that does not match its certificate, a wrong or missing passphrase, or an expired
server certificate; then builds an SSLContext: TLS ≥ 1.2 (configurable to 1.3), the plane's cert chain, the CA
files for client certificates, CERT_REQUIRED, and the CRL files (VERIFY_CRL_CHECK_LEAF) when any are listed.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import stat
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config.loader import ConfigError, LoadedConfig

log = logging.getLogger("mindie_like.tls")


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"ServerConfig.{key}: {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"ServerConfig.{key}: {path}: is a directory, not a file") from None
    except OSError as e:
        raise ConfigError(f"ServerConfig.{key}: {path}: cannot be read ({e.strerror})") from None


def _certs(data: bytes, path: Path, key: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"ServerConfig.{key}: {path}: not a PEM certificate")
    return certs


def _public_bytes(k) -> bytes:
    return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_secret_permissions(path: Path, key: str, strict: bool) -> None:
    """A private key or passphrase file that group or others may read: a warning, or (strict) a refusal."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        msg = f"ServerConfig.{key}: {path} is readable by group or others (mode {mode:o}); use chmod 600"
        if strict:
            raise ConfigError(msg)
        log.warning("%s", msg)


class PlaneFiles:
    """The resolved files of one plane's TLS key set."""

    def __init__(self, loaded: LoadedConfig, plane: str):
        t = loaded.config.ServerConfig.plane_tls(plane)
        p = t["prefix"]
        self.plane = plane
        self.strict_permissions = loaded.strict_permissions
        self.keys = {"cert": p + "Cert", "pk": p + "Pk", "pkPwd": p + "PkPwd", "caFile": p + "CaFile",
                     "crlFiles": p + "CrlFiles"}
        r = loaded.resolve
        self.cert = r(t["cert"], "ServerConfig." + self.keys["cert"])
        self.pk = r(t["pk"], "ServerConfig." + self.keys["pk"])
        self.pk_pwd = r(t["pkPwd"], "ServerConfig." + self.keys["pkPwd"]) if t["pkPwd"] else None
        self.ca_files = [r(os.path.join(t["caPath"], f), "ServerConfig." + self.keys["caFile"])
                         for f in t["caFile"]]
        self.crl_files = [r(os.path.join(t["crlPath"], f), "ServerConfig." + self.keys["crlFiles"])
                          for f in t["crlFiles"]]


def check_plane_files(files: PlaneFiles) -> Optional[bytes]:
    """Validates one plane's files; returns the key passphrase (or None). Raises ConfigError."""
    k = files.keys
    chain = _certs(_read(files.cert, k["cert"]), files.cert, k["cert"])
    leaf = chain[0]
    now = dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise ConfigError(f"ServerConfig.{k['cert']}: {files.cert}: the certificate expired on "
                          f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if leaf.not_valid_before_utc > now + dt.timedelta(minutes=5):
        raise ConfigError(f"ServerConfig.{k['cert']}: {files.cert}: the certificate is not valid before "
                          f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    key_data = _read(files.pk, k["pk"])
    check_secret_permissions(files.pk, k["pk"], files.strict_permissions)
    password: Optional[bytes] = None
    if files.pk_pwd is not None and files.pk_pwd.exists():
        check_secret_permissions(files.pk_pwd, k["pkPwd"], files.strict_permissions)
        password = _read(files.pk_pwd, k["pkPwd"]).rstrip(b"\r\n") or None
    try:
        key = serialization.load_pem_private_key(key_data, password=password)
    except TypeError:
        if password is None:
            raise ConfigError(f"ServerConfig.{k['pk']}: {files.pk} is encrypted and the passphrase file "
                              f"ServerConfig.{k['pkPwd']} ({files.pk_pwd}) does not exist") from None
        password = None   # a passphrase given for an unencrypted key: ignore it
        key = serialization.load_pem_private_key(key_data, password=None)
    except ValueError:
        if password is not None:
            raise ConfigError(f"ServerConfig.{k['pkPwd']}: {files.pk_pwd}: wrong passphrase for "
                              f"{files.pk}") from None
        raise ConfigError(f"ServerConfig.{k['pk']}: {files.pk}: not a PEM private key") from None
    if _public_bytes(key.public_key()) != _public_bytes(leaf.public_key()):
        raise ConfigError(f"ServerConfig.{k['pk']}: {files.pk} does not match the certificate "
                          f"ServerConfig.{k['cert']} ({files.cert})")
    if not files.ca_files:
        raise ConfigError(f"ServerConfig.{k['caFile']}: []: mutual TLS needs at least one CA file")
    for ca in files.ca_files:
        _certs(_read(ca, k["caFile"]), ca, k["caFile"])
    for crl_path in files.crl_files:
        data = _read(crl_path, k["crlFiles"])
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            raise ConfigError(f"ServerConfig.{k['crlFiles']}: {crl_path}: not a PEM CRL") from None
        nu = crl.next_update_utc
        if nu is not None and nu < now:
            log.warning("ServerConfig.%s: %s: the CRL's next update was due %s: clients will be refused until it "
                        "is renewed", k["crlFiles"], crl_path, nu)
    return password


def server_ssl_context(loaded: LoadedConfig, plane: str) -> ssl.SSLContext:
    files = PlaneFiles(loaded, plane)
    password = check_plane_files(files)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if loaded.config.ServerConfig.tlsMinVersion == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(str(files.cert), str(files.pk), password=password)
    except ssl.SSLError as e:
        raise ConfigError(f"ServerConfig.{files.keys['pk']}: {files.pk}: cannot be used with "
                          f"{files.cert} ({e.reason or e})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    for ca in files.ca_files:
        ctx.load_verify_locations(cafile=str(ca))
    if files.crl_files:
        for crl in files.crl_files:
            ctx.load_verify_locations(cafile=str(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def check_all_planes(loaded: LoadedConfig, planes: list[str]) -> None:
    for plane in planes:
        check_plane_files(PlaneFiles(loaded, plane))


def client_ssl_context(ca: os.PathLike | str, cert: Optional[os.PathLike | str] = None,
                       key: Optional[os.PathLike | str] = None) -> ssl.SSLContext:
    """A client context for tests and tools: trusts `ca`, presents `cert`/`key` when given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx
