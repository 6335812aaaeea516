"""etcd TLS/auth settings without etcd: validation (a ValueError naming the option, never
echoing a secret), etcdctl's environment variables, what repr() shows, the Authenticate
messages on the wire, and how grpc's TLS failures are put into words."""

from __future__ import annotations

import pathlib
import pickle
from typing import Any

import grpc
import pytest
from _certs import Pki

import lbclient.etcd
from lbclient import InvalidTargetError, ServiceConfigError
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver._etcd_client import (
    AuthenticateRequest,
    AuthenticateResponse,
    _tls_problem,
)
from lbclient.resolver._etcd_security import (
    EtcdAuth,
    EtcdOptionError,
    Secret,
    parse_security,
    redacted,
)
from lbclient.resolver.etcd import EtcdResolver

PASSWORD = "s3cret-pa55word"
KEY_SECRET = "PRIVATEKEYBYTES"


class _Null:
    def on_resolved(self, state: object) -> None: ...

    def on_resolver_error(self, error: Exception) -> None: ...


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pem")
    pki = Pki()
    client, other = pki.client("a"), pki.client("b")
    files = {"ca": pki.ca_pem, "cert": client.cert, "key": client.key,
             "other_key": other.key, "junk": b"not a certificate\n",
             "encrypted": b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nxx\n"
                          b"-----END ENCRYPTED PRIVATE KEY-----\n"}
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {**files, "dir": d}


def _resolver(options: dict[str, Any]) -> EtcdResolver:
    return EtcdResolver(parse_target("etcd://127.0.0.1:2379/svc"), _Null(),
                        {"env": False, **options})


def _error(options: dict[str, Any]) -> EtcdOptionError:
    with pytest.raises(EtcdOptionError) as info:
        _resolver(options)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ServiceConfigError)
    return info.value


def test_defaults_are_plaintext_without_auth() -> None:
    r = _resolver({})
    assert not r.security.tls and r.security.new_auth() is None
    assert repr(r.security) == "EtcdSecurity(tls=False)"
    assert r.security.channel_credentials() is None


@pytest.mark.parametrize(("options", "path", "words"), [
    ({"tls": "yes"}, "tls", "must be true or false"),
    ({"env": 1}, "env", "must be true or false"),
    ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "cannot read '/nonexistent/ca.pem'"),
    ({"ca_file": 5}, "ca_file", "must be a file path, got int"),
    ({"ca_file": "{dir}/junk"}, "ca_file", "does not contain a PEM certificate"),
    ({"ca_file": "{dir}/ca", "ca_pem": "{ca}"}, "ca_pem", "give ca_file or ca_pem, not both"),
    ({"cert_file": "{dir}/cert"}, "cert_file", "a client cert needs its key"),
    ({"key_pem": "{key}"}, "key_pem", "a client key needs its cert"),
    ({"cert_pem": "{cert}", "key_pem": 12}, "key_pem", "must be PEM text (str or bytes)"),
    ({"cert_pem": "{cert}", "key_pem": KEY_SECRET}, "key_pem",
     "does not contain a PEM private key"),
    ({"cert_file": "{dir}/cert", "key_file": "{dir}/encrypted"}, "key_file",
     "is an encrypted private key (grpc needs it unencrypted)"),
    ({"cert_file": "{dir}/cert", "key_file": "{dir}/other_key"}, "key_file",
     "is not the private key of"),
    ({"tls": False, "ca_pem": "{ca}"}, "tls", "is false but TLS files/PEMs are given"),
    ({"credentials": "tls"}, "credentials", "must be a grpc.ChannelCredentials"),
    ({"credentials": grpc.ssl_channel_credentials(), "ca_pem": "{ca}"}, "ca_pem",
     "either credentials or the TLS files"),
    ({"server_name": "a b", "tls": True}, "server_name", "must be a host name"),
    ({"server_name": "etcd.test"}, "server_name", "needs TLS"),
    ({"password": PASSWORD}, "username", "is missing (a password is given)"),
    ({"username": "alice"}, "password", "is missing (username 'alice' is given)"),
    ({"username": "", "password": PASSWORD}, "username", "must be a non-empty string"),
    ({"username": "alice", "password": 123456789}, "password", "must be a string, got int"),
])
def test_bad_options(options: dict[str, Any], path: str, words: str,
                     pem: dict[str, Any]) -> None:
    filled = {k: v.format(dir=pem["dir"], ca=pem["ca"].decode(), cert=pem["cert"].decode(),
                          key=pem["key"].decode()) if isinstance(v, str) else v
              for k, v in options.items()}
    error = _error(filled)
    assert error.path == f"resolver_options.{path}"
    assert words in str(error), str(error)
    for secret in (PASSWORD, "123456789", KEY_SECRET, pem["key"].decode().splitlines()[1]):
        assert secret not in str(error)


def test_pem_and_file_inputs_are_accepted(pem: dict[str, Any]) -> None:
    d = pem["dir"]
    files = _resolver({"ca_file": d / "ca", "cert_file": str(d / "cert"),
                       "key_file": d / "key"}).security
    assert files.tls and files.client_cert and files.channel_credentials() is not None
    assert repr(files) == (f"EtcdSecurity(tls=True, ca=file '{d}/ca', cert=file "
                           f"'{d}/cert', key=file '{d}/key')")
    pems = _resolver({"ca_pem": pem["ca"].decode(), "cert_pem": pem["cert"],
                      "key_pem": pem["key"], "server_name": "etcd.test",
                      "username": "alice", "password": PASSWORD}).security
    assert pems.channel_options() == [("grpc.ssl_target_name_override", "etcd.test")]
    text = repr(pems)
    assert "key=<hidden>" in text and "password=<hidden>" in text
    assert PASSWORD not in text and pem["key"].decode().splitlines()[1] not in text
    system_roots = _resolver({"tls": True}).security
    assert system_roots.tls and system_roots.ca is None


def test_environment_variables(pem: dict[str, Any]) -> None:
    d = pem["dir"]
    env = {"ETCDCTL_CACERT": str(d / "ca"), "ETCDCTL_CERT": str(d / "cert"),
           "ETCDCTL_KEY": str(d / "key"), "ETCDCTL_USER": f"alice:{PASSWORD}"}
    s = parse_security({}, "resolver_options", env)
    assert s.tls and s.client_cert and s.username == "alice"
    assert s.from_env == ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER")
    auth = s.new_auth()
    assert auth is not None and auth.password.reveal() == PASSWORD
    assert PASSWORD not in repr(s) and PASSWORD not in repr(auth)
    # A name, and the password apart (etcdctl's --user / --password).
    s = parse_security({}, "", {"ETCDCTL_USER": "bob", "ETCDCTL_PASSWORD": PASSWORD})
    assert s.username == "bob" and s.from_env == ("ETCDCTL_USER", "ETCDCTL_PASSWORD")
    # An option of a group wins over the whole group's variables; env=False: none.
    s = parse_security({"tls": True, "username": "carol", "password": "x"}, "", env)
    assert (s.ca, s.cert, s.username, s.from_env) == (None, None, "carol", ())
    assert parse_security({"env": False}, "", env).from_env == ()
    with pytest.raises(EtcdOptionError) as info:
        parse_security({}, "", {"ETCDCTL_USER": "bob"})
    assert info.value.path == "ETCDCTL_USER" and "has no password" in str(info.value)
    with pytest.raises(EtcdOptionError) as info:
        parse_security({}, "", {"ETCDCTL_USER": f":{PASSWORD}"})
    assert "user name is empty" in str(info.value) and PASSWORD not in str(info.value)
    with pytest.raises(EtcdOptionError) as info:
        parse_security({}, "", {"ETCDCTL_KEY": str(d / "key")})
    assert info.value.path == "ETCDCTL_KEY" and "needs its cert" in str(info.value)
    with pytest.raises(EtcdOptionError) as info:
        parse_security({}, "", {"ETCDCTL_CACERT": str(d / "missing.pem")})
    assert info.value.path == "ETCDCTL_CACERT"


def test_secrets_stay_out_of_repr_options_and_pickles() -> None:
    r = _resolver({"username": "alice", "password": PASSWORD})
    assert r.options["password"] == "<hidden>" and r.options["username"] == "alice"
    assert PASSWORD not in repr(r) and PASSWORD not in str(r.options)
    assert redacted({"password": PASSWORD, "key_pem": "k", "ca_pem": "c"}) == {
        "password": "<hidden>", "key_pem": "<hidden>", "ca_pem": "c"}
    secret = Secret(PASSWORD)
    assert repr(secret) == str(secret) == "<hidden>" and f"{secret}" == "<hidden>"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    auth = EtcdAuth("alice", secret)
    auth.store("tok-123")
    assert repr(auth) == "EtcdAuth(username='alice', password=<hidden>, token=<hidden>)"
    assert "tok-123" not in repr(vars(auth))
    auth.invalidate("older")                 # another token: kept
    assert auth.token() == "tok-123"
    auth.invalidate("tok-123")
    assert (auth.token(), auth.authentications, auth.rejections) == (None, 1, 1)


def test_credentials_in_the_target_are_refused_without_echo() -> None:
    with pytest.raises(InvalidTargetError) as info:
        validate_target(parse_target(f"etcd://alice:{PASSWORD}@127.0.0.1:2379/svc"))
    assert PASSWORD not in str(info.value) and "username and password" in str(info.value)


def test_register_keywords(pem: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'ca'"):
        lbclient.etcd.register("127.0.0.1:1", "p", "127.0.0.1:2", ca="x")  # type: ignore[call-arg]
    with pytest.raises(lbclient.etcd.EtcdOptionError) as info:
        lbclient.etcd.add_endpoint("127.0.0.1:1", "p", "127.0.0.1:2",
                                   ca_file=str(pem["dir"] / "junk"))
    assert info.value.path == "ca_file" and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="password: must be a string") as err:
        lbclient.etcd.remove_endpoint("127.0.0.1:1", "p", "127.0.0.1:2", username="a",
                                      password=b"raw")  # type: ignore[arg-type]
    assert "raw" not in str(err.value)


def test_authenticate_messages_match_etcds_wire_format() -> None:
    # etcdserverpb.AuthenticateRequest{name: 1, password: 2}; response token: 2.
    request = AuthenticateRequest(name="alice", password="pw")
    assert request.SerializeToString() == b"\n\x05alice\x12\x02pw"
    assert AuthenticateResponse.FromString(b"\n\x00\x12\x03tok").token == "tok"


GRPC = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: "


@pytest.mark.parametrize(("details", "options", "words"), [
    (GRPC + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:"
     "SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
     "certificate: OK", {"tls": True},
     "TLS handshake with etcd 127.0.0.1:2379 failed: certificate verify failed: unable to "
     "get local issuer certificate; etcd's certificate is not signed by a CA of the "
     "system's trust store (give ca_file or ca_pem)"),
    (GRPC + "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
     "Verification Check failed.", {"tls": True, "server_name": "etcd.test"},
     "its certificate is not valid for the name 'etcd.test'"),
    (GRPC + "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
     "Verification Check failed.", {"tls": True},
     "its certificate is not valid for the name '127.0.0.1'"),
    (GRPC + "Unwrap failed (TSI_DATA_CORRUPTED)", {"tls": True},
     "it requires a client certificate (etcd --client-cert-auth); give cert_file and "
     "key_file (Unwrap failed (TSI_DATA_CORRUPTED))"),
    (GRPC + "Failed to create security handshaker.", {"tls": True},
     "TLS setup for etcd 127.0.0.1:2379 failed: the client certificate and key cannot be "
     "used together"),
    (GRPC + "Handshake read failed (recvmsg:Connection reset by peer (104))", {"tls": True},
     "TLS handshake with etcd 127.0.0.1:2379 failed: Handshake read failed (recvmsg:"
     "Connection reset by peer (104)) (does this member serve TLS?)"),
    (GRPC + "Failed to connect to remote host: Connection refused", {"tls": True}, None),
    (GRPC + "Socket closed", {}, None),
])
def test_tls_failures_in_words(details: str, options: dict[str, Any],
                               words: str | None) -> None:
    security = parse_security({"env": False, **options})
    text = _tls_problem(details, "127.0.0.1:2379", security)
    if words is None:
        assert text is None
    else:
        assert text is not None and words in text, text


def test_tls_client_cert_files_are_read_again(pem: dict[str, Any],
                                              tmp_path: pathlib.Path) -> None:
    """Files are read for every connection (rotation), and one gone meanwhile is an
    OSError the connection turns into a sentence (see test_etcd_tls for the real run)."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pem["ca"])
    security = parse_security({"ca_file": ca, "env": False})
    assert security.channel_credentials() is not None
    ca.unlink()
    with pytest.raises(OSError):
        security.channel_credentials()
    from lbclient.resolver._etcd_client import EtcdAccessError, EtcdConnection
    with pytest.raises(EtcdAccessError, match="etcd member 127.0.0.1:1: cannot read a TLS "
                                              "file: .*ca.pem"):
        EtcdConnection("127.0.0.1:1", security=security)
