"""How lbclient reaches etcd securely: TLS, mTLS and username/password, from options or env.

The same settings serve the ``etcd://`` resolver (``resolver_options`` keys) and
:func:`lbclient.etcd.register` / ``add_endpoint`` / ``remove_endpoint`` (keyword arguments):

=================================  ========================================================
``tls``                            True: TLS even without a CA (the system's roots) [on
                                   as soon as a CA or a client certificate is given]
``ca_file`` / ``ca_pem``           the CA(s) etcd's server certificate must chain to
``cert_file`` / ``cert_pem``       client certificate (mTLS: etcd ``--client-cert-auth``)
``key_file`` / ``key_pem``         its private key (unencrypted PEM)
``server_name``                    the name etcd's certificate is checked against (and the
                                   SNI) instead of the member's host
``username`` / ``password``        etcd v3 authentication (``Auth/Authenticate``)
``env``                            False: ignore the ``ETCDCTL_*`` variables below [True]
``credentials``                    a ready ``grpc.ChannelCredentials`` (instead of the
                                   TLS keys above)
=================================  ========================================================

Environment (etcdctl's names), used only when no option of that group is given:
``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY`` (files) when no TLS option is given;
``ETCDCTL_USER`` (``name`` or ``name:password``) and ``ETCDCTL_PASSWORD`` when neither
``username`` nor ``password`` is.

Files are checked when the settings are parsed and read again for every new connection,
so certificates rotated on disk are used from the next reconnection on.

Secrets (the password, auth tokens, private keys) never appear in ``repr()``, log lines
or error messages: messages about them name the option, never the value.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ..errors import ServiceConfigError

KEYS = frozenset({"tls", "ca_file", "ca_pem", "cert_file", "cert_pem", "key_file",
                  "key_pem", "server_name", "username", "password", "env", "credentials"})
SECRET_KEYS = frozenset({"password", "key_pem"})
ENV_TLS = ("ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY")
ENV_AUTH = ("ETCDCTL_USER", "ETCDCTL_PASSWORD")
HIDDEN = "<hidden>"

_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY = b"PRIVATE KEY-----"
_WHAT = {_CERT: "a PEM certificate ('-----BEGIN CERTIFICATE-----')",
         _KEY: "a PEM private key ('-----BEGIN ... PRIVATE KEY-----')"}


class EtcdOptionError(ServiceConfigError):
    """A bad etcd TLS/auth setting; ``path`` names it (``resolver_options.ca_file``,
    ``ca_file`` for :func:`lbclient.etcd.register`, or the environment variable)."""


class Secret:
    """A string kept out of ``repr()``/``str()`` (and so out of logs and tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return HIDDEN

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("an etcd secret cannot be pickled")


@dataclass(frozen=True, repr=False)
class Pem:
    """One PEM input: a file (read again at every connection) or the bytes themselves."""

    option: str                 # where it came from: "ca_file", "key_pem", "ETCDCTL_KEY"
    path: str | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as f:
            return f.read()

    def __repr__(self) -> str:
        if self.path is not None:
            return f"file {self.path!r}"
        return HIDDEN if self.option == "key_pem" else f"<{len(self.data or b'')} bytes PEM>"


class EtcdAuth:
    """The auth token of one etcd user, shared by the successive connections of one
    resolver or registration. ``token()`` is None when none is held (authenticate
    first), ``""`` when the server has authentication disabled. Thread-safe."""

    def __init__(self, username: str, password: Secret) -> None:
        self.username = username
        self.password = password
        self._token: Secret | None = None
        self._lock = threading.Lock()
        self.authentications = 0            # successful Authenticate calls (visibility)
        self.rejections = 0                 # tokens the server refused (visibility)

    def token(self) -> str | None:
        with self._lock:
            return None if self._token is None else self._token.reveal()

    def store(self, token: str) -> None:
        with self._lock:
            self._token = Secret(token)
            if token:
                self.authentications += 1

    def invalidate(self, token: str | None) -> None:
        """Forget ``token`` (refused by the server) unless a newer one replaced it."""
        with self._lock:
            if self._token is not None and self._token.reveal() == token:
                self._token = None
                self.rejections += 1

    def __repr__(self) -> str:
        held = "none" if self._token is None else HIDDEN
        return f"EtcdAuth(username={self.username!r}, password={HIDDEN}, token={held})"


class EtcdSecurity:
    """Validated TLS and auth settings (immutable after construction)."""

    def __init__(self, *, tls: bool = False, ca: Pem | None = None, cert: Pem | None = None,
                 key: Pem | None = None, server_name: str | None = None,
                 username: str | None = None, password: Secret | None = None,
                 credentials: grpc.ChannelCredentials | None = None,
                 from_env: tuple[str, ...] = ()) -> None:
        self.tls = tls or credentials is not None or any((ca, cert, key))
        self.ca, self.cert, self.key = ca, cert, key
        self.server_name = server_name
        self.username = username
        self._password = password
        self._credentials = credentials
        self.from_env = from_env             # the ETCDCTL_* variables used (names only)

    @property
    def client_cert(self) -> bool:
        return self.cert is not None

    @property
    def custom_credentials(self) -> bool:
        """A ``grpc.ChannelCredentials`` was given (instead of files/PEMs)."""
        return self._credentials is not None

    def new_auth(self) -> EtcdAuth | None:
        if self.username is None or self._password is None:
            return None
        return EtcdAuth(self.username, self._password)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None for plaintext; reads the PEM files now (``OSError`` if one is gone)."""
        if not self.tls:
            return None
        if self._credentials is not None:
            return self._credentials
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read() if self.ca else None,
            private_key=self.key.read() if self.key else None,
            certificate_chain=self.cert.read() if self.cert else None)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name \
            else []

    def __repr__(self) -> str:
        parts = [f"tls={self.tls}"]
        for name in ("ca", "cert", "key", "server_name", "username"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value!r}")
        if self._password is not None:
            parts.append(f"password={HIDDEN}")
        if self._credentials is not None:
            parts.append("credentials=<grpc.ChannelCredentials>")
        if self.from_env:
            parts.append(f"from_env={list(self.from_env)!r}")
        return f"EtcdSecurity({', '.join(parts)})"


PLAINTEXT = EtcdSecurity()
Fail = Callable[[str, str], EtcdOptionError]


def parse_security(options: Mapping[str, Any], root: str = "",
                   environ: Mapping[str, str] | None = None) -> EtcdSecurity:
    """Settings from ``options`` (only the keys in :data:`KEYS` are looked at) and, unless
    ``env`` is false, the ``ETCDCTL_*`` variables of ``environ`` (``os.environ``).
    Errors are :class:`EtcdOptionError` whose path is ``root.<key>`` (or the variable)."""
    environ = os.environ if environ is None else environ

    def path(key: str) -> str:
        return f"{root}.{key}" if root else key

    def fail(key: str, message: str) -> EtcdOptionError:  # a Fail
        return EtcdOptionError(path(key), message)

    def given(key: str) -> bool:
        return options.get(key) is not None

    use_env = _flag(options, "env", True, fail)
    tls = _flag(options, "tls", None, fail)
    credentials = options.get("credentials")
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise fail("credentials", "must be a grpc.ChannelCredentials")
    used: list[str] = []
    tls_keys = ("tls", "credentials", "ca_file", "ca_pem", "cert_file", "cert_pem",
                "key_file", "key_pem")
    ca = cert = key = None
    if any(given(k) for k in tls_keys):
        ca = _pem(options, "ca", _CERT, fail)
        cert = _pem(options, "cert", _CERT, fail)
        key = _pem(options, "key", _KEY, fail)
        if credentials is not None:
            for k in tls_keys[2:]:
                if given(k):
                    raise fail(k, "give either credentials or the TLS files/PEMs, not both")
            if tls is False:
                raise fail("tls", "is false but credentials are given")
    elif use_env:
        for var, kind in zip(ENV_TLS, ("ca", "cert", "key"), strict=True):
            value = environ.get(var)
            if value:
                mark = _KEY if kind == "key" else _CERT
                pem = _read_file(value, var, mark, EtcdOptionError)
                ca, cert, key = (pem if kind == "ca" else ca, pem if kind == "cert" else cert,
                                 pem if kind == "key" else key)
                used.append(var)
    if tls is False and (ca or cert or key):
        raise fail("tls", "is false but TLS files/PEMs are given")
    if (cert is None) != (key is None):
        have, missing = ("cert", "key") if key is None else ("key", "cert")
        present = next(p for p in (cert, key) if p is not None)
        where = present.option if present.option.startswith("ETCDCTL_") else path(
            present.option)
        raise EtcdOptionError(where, f"a client {have} needs its {missing} "
                                     f"({missing}_file or {missing}_pem) too")
    if cert is not None and key is not None and cert.path and key.path:
        _check_pair(cert, key, path(key.option) if not key.option.startswith("ETCDCTL")
                    else key.option)
    server_name = options.get("server_name")
    if server_name is not None:
        if not isinstance(server_name, str) or not server_name.strip() \
                or any(c.isspace() for c in server_name):
            raise fail("server_name", f"must be a host name, got {server_name!r}")
        if not (tls or credentials is not None or ca or cert or key):
            raise fail("server_name", "needs TLS (give ca_file/ca_pem or tls=True)")
    username, password = _auth(options, fail, environ if use_env else {}, used)
    return EtcdSecurity(tls=bool(tls), ca=ca, cert=cert, key=key, server_name=server_name,
                        username=username, password=password, credentials=credentials,
                        from_env=tuple(used))


def redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with secret values replaced by ``<hidden>`` (safe to show or log)."""
    return {k: (HIDDEN if k in SECRET_KEYS and v is not None else v)
            for k, v in options.items()}


# ----------------------------------------------------------------------- helpers
def _flag(options: Mapping[str, Any], key: str, default: bool | None,
          fail: Fail) -> bool | None:
    value = options.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(key, f"must be true or false, got {value!r}")
    return value


def _pem(options: Mapping[str, Any], kind: str, mark: bytes, fail: Fail) -> Pem | None:
    file_key, pem_key = f"{kind}_file", f"{kind}_pem"
    file_value, pem_value = options.get(file_key), options.get(pem_key)
    if file_value is not None and pem_value is not None:
        raise fail(pem_key, f"give {file_key} or {pem_key}, not both")
    if file_value is not None:
        if not isinstance(file_value, str | os.PathLike) or not os.fspath(file_value):
            raise fail(file_key, f"must be a file path, got {type(file_value).__name__}")
        return _read_file(os.fspath(file_value), file_key, mark, fail)
    if pem_value is None:
        return None
    if isinstance(pem_value, str):
        pem_value = pem_value.encode("utf-8", "replace")
    if not isinstance(pem_value, bytes):
        raise fail(pem_key, f"must be PEM text (str or bytes), got {type(pem_value).__name__}")
    problem = _pem_problem(pem_value, mark)
    if problem:
        raise fail(pem_key, problem)
    return Pem(pem_key, data=pem_value)


def _read_file(path: str, option: str, mark: bytes, fail: Fail) -> Pem:
    """Checks that ``path`` is readable and holds the right kind of PEM (the message
    names the file and the option, never the content)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise fail(option, f"cannot read {path!r}: {exc.strerror or exc}") from None
    problem = _pem_problem(data, mark)
    if problem:
        raise fail(option, f"{path!r} {problem}")
    return Pem(option, path=path)


def _pem_problem(data: bytes, mark: bytes) -> str | None:
    if b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        return "is an encrypted private key (grpc needs it unencrypted)"
    if mark not in data:
        return f"does not contain {_WHAT[mark]}"
    return None


def _check_pair(cert: Pem, key: Pem, where: str) -> None:
    """The stdlib's OpenSSL says whether a key file belongs to a certificate file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert.path or "", key.path, password=lambda: b"")
    except ssl.SSLError as exc:
        reason = exc.reason or "unusable"
        raise EtcdOptionError(where, f"{key.path!r} is not the private key of "
                                     f"{cert.path!r} ({reason.lower().replace('_', ' ')})"
                              ) from None
    except OSError as exc:
        raise EtcdOptionError(where, f"cannot be loaded: {exc.strerror or exc}") from None


def _auth(options: Mapping[str, Any], fail: Fail, environ: Mapping[str, str],
          used: list[str]) -> tuple[str | None, Secret | None]:
    username, password = options.get("username"), options.get("password")
    if username is None and password is None:
        user_var, password_var = environ.get("ETCDCTL_USER"), environ.get("ETCDCTL_PASSWORD")
        if not user_var:
            return None, None
        name, sep, inline = user_var.partition(":")
        used.append("ETCDCTL_USER")
        if not name:
            raise EtcdOptionError("ETCDCTL_USER", "the user name is empty")
        if sep:
            return name, Secret(inline)
        if password_var is None:
            raise EtcdOptionError("ETCDCTL_USER", f"user {name!r} has no password "
                                  "(give ETCDCTL_USER=name:password or ETCDCTL_PASSWORD)")
        used.append("ETCDCTL_PASSWORD")
        return name, Secret(password_var)
    if username is None:
        raise fail("username", "is missing (a password is given)")
    if not isinstance(username, str) or not username:
        raise fail("username", f"must be a non-empty string, got {username!r}")
    if password is None:
        raise fail("password", f"is missing (username {username!r} is given)")
    if isinstance(password, Secret):
        return username, password
    if not isinstance(password, str):
        raise fail("password", f"must be a string, got {type(password).__name__}")
    return username, Secret(password)
