"""TLS and bearer tokens for the defense service: PEM files checked before use, and the token a caller sends.

The PEM files are parsed with the standard library's ``ssl`` as soon as they are named, because grpc
parses them only when the port is bound (the server then says just "Failed to bind") or when the first
connection is attempted (the client then waits on a handshake that can never succeed). So a missing,
unreadable or mismatched file is one :class:`CredentialsError` naming its flag, and the command exits 2
before any work (``docs/grpc.md`` "Security").

A caller proves who it is with a bearer token, sent as the gRPC metadata ``authorization: Bearer TOKEN``
on every call; the server keeps only each token's :func:`token_sha256` (``defense/callers.py``). A client
reads its token from a file (``--token-file``) or the ``AVC_TOKEN`` environment variable, never from the
command line, where ``ps`` shows it to every user of the machine.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import ssl
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
BEARER = "bearer "  # the scheme, compared case-insensitively (RFC 6750 and RFC 9110 say it is)
TOKEN_ENV = "AVC_TOKEN"
_PEM = "-----BEGIN "


class CredentialsError(ValueError):
    """A TLS file or token that cannot be used; the message names the flag and what was expected."""


def token_sha256(token: str) -> str:
    """The hex sha256 of ``token``'s UTF-8 bytes: what a callers file stores in place of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CredentialsError(f"{flag} {path}: cannot read it ({err.strerror or err})") from None
    if _PEM.encode() not in data:
        raise CredentialsError(f"{flag} {path}: expected a PEM file (text with a '{_PEM}...' line), found none")
    return data


def _certificates(path: Path, flag: str) -> bytes:
    """The PEM certificates in ``path``, checked to parse as X.509."""
    data = _read(path, flag)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as err:
        raise CredentialsError(f"{flag} {path}: expected PEM X.509 certificates, could not parse them "
                               f"({err})") from None
    return data


def _key_pair(cert: Path, key: Path, cert_flag: str, key_flag: str) -> tuple[bytes, bytes]:
    """(certificate chain, private key) as PEM bytes, checked to parse and to belong together."""
    chain, private = _certificates(cert, cert_flag), _read(key, key_flag)
    try:  # the password callback refuses an encrypted key instead of prompting on the terminal (grpc takes none)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:
        what = ("is not the private key of" if "KEY_VALUES_MISMATCH" in str(err)
                else "expected an unencrypted PEM private key for")
        raise CredentialsError(f"{key_flag} {key}: {what} {cert_flag} {cert} ({err.reason or err})") from None
    return chain, private


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key, and the CA its clients' certificates must come from (mutual TLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # None: no client certificates asked for

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        """Read and check ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``; :class:`CredentialsError`."""
        chain, private = _key_pair(cert, key, "--tls-cert", "--tls-key")
        return cls(chain, private, None if client_ca is None else _certificates(client_ca, "--tls-client-ca"))

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


@dataclass(frozen=True)
class ClientTls:
    """The CA that signed the server's certificate, this client's own certificate and key for mutual TLS, and the
    name the server's certificate must carry when it is not the target's host."""

    ca: bytes
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def load(cls, ca: Path, cert: Path | None = None, key: Path | None = None,
             server_name: str | None = None) -> ClientTls:
        """Read and check ``--tls-ca`` and the optional ``--tls-cert`` + ``--tls-key``; :class:`CredentialsError`."""
        if (cert is None) != (key is None):
            raise CredentialsError("--tls-cert and --tls-key: give both (this client's certificate and its key) or "
                                   "neither")
        chain, private = (None, None) if cert is None else _key_pair(cert, key, "--tls-cert", "--tls-key")
        return cls(_certificates(ca, "--tls-ca"), chain, private, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, self.private_key, self.cert_chain)

    def options(self) -> list[tuple[str, str]]:
        """Channel options: the name checked against the server's certificate, if overridden."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class _CallDetails(namedtuple("_CallDetails", "method timeout metadata credentials wait_for_ready compression"),
                   grpc.ClientCallDetails):
    """A call's details with metadata added (grpc's interceptors take them whole)."""


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to every call of a channel (``grpc.intercept_channel``).

    An interceptor rather than grpc's call credentials, which refuse a plaintext channel: a server
    on loopback may take tokens without TLS.
    """

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(details.method, details.timeout, (*(details.metadata or ()), self._header),
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)


def read_token(path: Path | None) -> str | None:
    """The bearer token: ``path``'s content (``--token-file``), else ``$AVC_TOKEN``, else None; whitespace around
    it is stripped. :class:`CredentialsError` for a file that cannot be read, or a token gRPC cannot send."""
    if path is not None:
        try:
            token, where = path.read_text().strip(), f"--token-file {path}"
        except (OSError, UnicodeDecodeError) as err:
            raise CredentialsError(f"--token-file {path}: cannot read it ({err})") from None
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
        if not token:
            return None
    if not token or not (token.isascii() and token.isprintable()) or " " in token:
        raise CredentialsError(f"{where}: expected one token of printable ASCII without spaces (e.g. "
                               f"python -c 'import secrets; print(secrets.token_urlsafe(32))'), found "
                               f"{'nothing' if not token else 'other characters'}")
    return token


def add_client_arguments(group: argparse._ActionsContainer, token: bool = True) -> None:
    """The client's TLS flags (and, with ``token``, ``--token-file``), shared by the scorer and the health probe."""
    group.add_argument("--tls-ca", metavar="PEM", type=Path, default=None,
                       help="connect with TLS, trusting a server certificate signed by this CA (PEM) "
                            "(default: plaintext)")
    group.add_argument("--tls-cert", metavar="PEM", type=Path, default=None,
                       help="mutual TLS: this client's certificate chain (PEM), with --tls-key and --tls-ca, for a "
                            "server started with --tls-client-ca (default: none)")
    group.add_argument("--tls-key", metavar="PEM", type=Path, default=None,
                       help="mutual TLS: the unencrypted private key (PEM) of --tls-cert")
    group.add_argument("--tls-server-name", metavar="NAME", default=None,
                       help="the name the server's certificate must carry (default: the host part of the target)")
    if token:
        group.add_argument("--token-file", metavar="PATH", type=Path, default=None,
                           help=f"send the bearer token in this file with every call, for a server started with "
                                f"--callers (default: ${TOKEN_ENV} if set, else no token; never on the command line, "
                                f"where ps shows it)")


def client_credentials(args: argparse.Namespace) -> tuple[ClientTls | None, str | None]:
    """(TLS, token) from the flags of :func:`add_client_arguments`; :class:`CredentialsError` for unusable ones."""
    if args.tls_ca is None:
        given = [flag for flag, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                                          ("--tls-server-name", args.tls_server_name)) if value is not None]
        if given:
            raise CredentialsError(f"{given[0]}: only with --tls-ca (the CA that signed the server's certificate)")
        tls = None
    else:
        tls = ClientTls.load(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return tls, read_token(getattr(args, "token_file", None))
