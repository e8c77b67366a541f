"""TLS file checks: every broken set is refused with one line naming the key; a good set builds a context."""
from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from pathlib import Path

import pytest

from mindie_like.config import ConfigError, LoadedConfig, validate_config
from mindie_like.server import certgen
from mindie_like.server.tls import PlaneFiles, check_plane_files, server_ssl_context


@pytest.fixture(scope="module")
def good_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("tlshome")
    certgen.generate(home)
    return home


@pytest.fixture
def home(tmp_path, good_home) -> Path:
    import shutil
    shutil.copytree(good_home / "security", tmp_path / "security")
    return tmp_path


def loaded(home: Path, **server) -> LoadedConfig:
    d = {"ServerConfig": server,
         "BackendConfig": {"ModelDeployConfig": {"ModelConfig": [{"modelName": "m", "modelWeightPath": "w"}]}}}
    cfg, _, _ = validate_config(d, env={})
    return LoadedConfig(config=cfg, path=home / "conf/config.json", home=home)


def refusal(home, plane="business", **server) -> str:
    with pytest.raises(ConfigError) as e:
        server_ssl_context(loaded(home, **server), plane)
    assert len(e.value.lines) == 1
    return e.value.lines[0]


@pytest.mark.parametrize("plane", ["business", "management", "metrics"])
def test_good_set_builds_a_mutual_tls_context(home, plane):
    ctx = server_ssl_context(loaded(home), plane)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_tls13_only_when_configured(home):
    assert server_ssl_context(loaded(home, tlsMinVersion="1.3"), "business").minimum_version == \
        ssl.TLSVersion.TLSv1_3


def test_gen_certs_layout_and_key_modes(good_home):
    sec = good_home / "security"
    for key in sec.rglob("*.key.pem"):
        assert os.stat(key).st_mode & 0o777 == 0o600, key
    for pwd in (sec / "pass").rglob("*.txt"):
        assert os.stat(pwd).st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in (sec / "keys/server.key.pem").read_bytes()
    assert certgen.present(good_home)


def test_missing_cert(home):
    (home / "security/certs/server.pem").unlink()
    line = refusal(home)
    assert line == f"ServerConfig.tlsCert: {home / 'security/certs/server.pem'}: file not found"


def test_unreadable_cert(home):
    if os.geteuid() == 0:
        (home / "security/certs/server.pem").unlink()
        (home / "security/certs/server.pem").mkdir()
        assert refusal(home).endswith("is a directory, not a file")
    else:
        os.chmod(home / "security/certs/server.pem", 0)
        assert "cannot be read" in refusal(home)


def test_garbage_cert(home):
    (home / "security/certs/server.pem").write_text("hello")
    assert refusal(home).endswith("server.pem: not a PEM certificate")


def test_key_that_does_not_match_the_cert(home):
    other = certgen.issue_cert(certgen.make_ca(), "x", server=True)
    certgen.write_key(home / "security/keys/management/server.key.pem", other.key)
    line = refusal(home, plane="management")
    assert line.startswith("ServerConfig.managementTlsPk: ") and "does not match the certificate" in line


def test_expired_server_cert(home):
    ca = certgen.make_ca()
    now = dt.datetime.now(dt.timezone.utc)
    old = certgen.issue_cert(ca, "old", server=True, not_before=now - dt.timedelta(days=10),
                             not_after=now - dt.timedelta(days=1))
    certgen.write_cert(home / "security/certs/metrics/server.pem", old.cert)
    certgen.write_key(home / "security/keys/metrics/server.key.pem", old.key)
    line = refusal(home, plane="metrics")
    assert line.startswith("ServerConfig.metricsTlsCert: ") and "the certificate expired on" in line


def test_wrong_passphrase(home):
    (home / "security/pass/key_pwd.txt").write_text("not it\n")
    line = refusal(home)
    assert line.startswith("ServerConfig.tlsPkPwd: ") and "wrong passphrase" in line


def test_encrypted_key_without_passphrase_file(home):
    (home / "security/pass/key_pwd.txt").unlink()
    line = refusal(home)
    assert line.startswith("ServerConfig.tlsPk: ") and "is encrypted" in line


def test_missing_ca_and_crl(home):
    (home / "security/ca/ca.pem").unlink()
    assert refusal(home).startswith("ServerConfig.tlsCaFile: ")
    assert refusal(home, tlsCaFile=[]) == "ServerConfig.tlsCaFile: []: mutual TLS needs at least one CA file"


def test_missing_crl_is_refused_and_no_crl_list_disables_the_check(home):
    (home / "security/certs/server_crl.pem").unlink()
    assert refusal(home).startswith("ServerConfig.tlsCrlFiles: ")
    ctx = server_ssl_context(loaded(home, tlsCrlFiles=[]), "business")
    assert not ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_relative_tls_path_cannot_leave_home(home):
    line = refusal(home, tlsCert="../outside.pem")
    assert line.startswith('ServerConfig.tlsCert: "../outside.pem" climbs out of the home directory')


def test_loose_key_permissions_warn(home, caplog):
    os.chmod(home / "security/keys/server.key.pem", 0o644)
    with caplog.at_level(logging.WARNING, logger="mindie_like.tls"):
        check_plane_files(PlaneFiles(loaded(home), "business"))
    assert any("readable by group or others" in r.getMessage() for r in caplog.records)


def test_unencrypted_key_without_passphrase(tmp_path):
    certgen.generate(tmp_path, encrypt_keys=False)
    assert server_ssl_context(loaded(tmp_path), "business").verify_mode == ssl.CERT_REQUIRED
