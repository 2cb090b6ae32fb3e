"""Mutual TLS between hermesx processes and the cluster's name service secret.

Hermes had an authentication service between supervisors; hermesx gets the
same guarantee from one certificate authority per cluster (docs/DESIGN.md §8,
processes; §7 for the name service's access control):

* :func:`init_certs` makes the cluster CA (its subject names the cluster), a
  certificate and key per process name, and a random secret for the name
  service's ZooKeeper ACLs. Every file is of mode 0600 (keys, secrets and
  certificates alike) in a directory of mode 0700; a directory made before
  is tightened to that. It is idempotent: an existing CA, certificate or
  secret is kept, so every process of a cluster may call it at start.
* Every process certificate carries ``IP:127.0.0.1``, ``DNS:localhost``,
  ``DNS:<name>`` (when a valid host name), ``DNS:hermesx`` and the cluster
  marker ``URI:hermesx://<cluster>/<name>`` (plus ``OU=<cluster>``) and its
  role ``URI:hermesx-role://<cluster>/<role>`` (node, storesite, client,
  gateway, test: :mod:`hermesx.rpc.roles`); the CA carries ``URI:hermesx://<cluster>``.
  Both markers are signed by the CA, so a peer's role is as trustworthy as
  its membership.
* :func:`server_credentials` *requires* a client certificate signed by this
  cluster's CA; :func:`channel_credentials` presents the process's own
  certificate and trusts only the cluster CA. Nodes move between machines and
  listen on whatever address they get, so channels do not check host names:
  :func:`channel_options` pins the expected name to ``hermesx``, a name every
  certificate of the cluster carries. What authenticates a peer is the
  signature of the cluster CA, which only members hold certificates from.

How a refusal is refused *and* logged: gRPC Python offers only two modes for
client certificates, "require and verify" and "do not even ask" (measured:
with ``require_client_auth=False`` the server never sees a client
certificate, so an interceptor cannot authenticate anyone). We therefore
refuse at the TLS handshake, before any servicer runs: a client with no
certificate or with one of another CA never gets a call through. gRPC's core
logs each such refusal on the server's standard error (which the cluster
launcher writes to the process's log file) as
``Handshake failed with error SSL_ERROR_SSL: ... PEER_DID_NOT_RETURN_A_CERTIFICATE``
or ``... CERTIFICATE_VERIFY_FAILED``; see :data:`HANDSHAKE_REFUSAL_MARKER`.
(gRPC prints it at its default verbosity; ``GRPC_VERBOSITY=ERROR`` or lower
silences it.) Behind the handshake, :class:`PeerCheckInterceptor` checks the
cluster marker of every call's certificate and refuses, with UNAUTHENTICATED
and a log line of ours naming the peer's address and certificate, any
certificate that does not belong to this cluster, for CAs shared between
clusters or servers started without TLS by mistake. It then checks the
certificate's role against the RPC's allowed roles (:func:`hermesx.rpc.roles.allowed_roles`)
and refuses a call its role may not make with PERMISSION_DENIED and
``not_authorized: <server> refused <RPC>: role <role> may not call it``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import hmac
import ipaddress
import logging
import os
import pathlib
import re
import secrets
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hermesx.core.errors import ConfigurationError, NotAuthorizedError
from hermesx.core.identity import validate_name
from hermesx.observe.logflood import Throttle
from hermesx.rpc import roles

__all__ = [
    "HANDSHAKE_REFUSAL_MARKER",
    "TARGET_NAME",
    "ZK_TLS_MARKER",
    "ClusterCerts",
    "PeerCheckInterceptor",
    "PeerIdentity",
    "cert_role",
    "certificate_identity",
    "channel_credentials",
    "channel_options",
    "init_certs",
    "issue_cert",
    "load_certs",
    "peer_identity",
    "server_credentials",
    "ssl_client_context",
    "ssl_server_context",
    "zk_auth",
    "zk_readers",
    "zk_tls",
]

log = logging.getLogger(__name__)
# Its warnings name peers that misbehave: as many as they like (docs/DESIGN.md §10).
log.addFilter(Throttle())

TARGET_NAME: Final = "hermesx"
"""The name every certificate carries and every channel expects (see module docstring)."""

HANDSHAKE_REFUSAL_MARKER: Final = "Handshake failed"
"""What gRPC's core writes to standard error when it refuses a peer at the TLS handshake."""

ZK_USER: Final = "hermesx"
ZK_TLS_MARKER: Final = "zk-tls"
"""In a certificate directory: the cluster's ZooKeeper is reached over TLS (its secure port)."""
_CA_CERT, _CA_KEY, _SECRET, _LOCK = "ca.pem", "ca.key", "zk.secret", ".lock"
_CLIENT_SECRET: Final = "zk-client.secret"
ZK_CLIENT_USER: Final = "hermesx-client"
_URI_SCHEME: Final = "hermesx://"
_ROLE_SCHEME: Final = "hermesx-role://"
_CA_DAYS, _CERT_DAYS, _RENEW_DAYS = 3650, 825, 30
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a call, as its certificate says."""

    cluster: str
    name: str
    # None for a certificate issued before roles existed: it may call nothing.
    role: str | None = None

    def __str__(self) -> str:
        role = f" (role {self.role})" if self.role else ""
        return f"{self.name}{role} of cluster {self.cluster}"


@dataclass(frozen=True, slots=True)
class ClusterCerts:
    """The certificate directory of one cluster."""

    directory: pathlib.Path
    cluster: str

    @property
    def ca_cert(self) -> pathlib.Path:
        return self.directory / _CA_CERT

    @property
    def secret(self) -> pathlib.Path:
        return self.directory / _SECRET

    @property
    def client_secret(self) -> pathlib.Path:
        """The read-only name service secret given to clients instead of :attr:`secret`."""
        return self.directory / _CLIENT_SECRET

    def cert(self, name: str) -> pathlib.Path:
        return self.directory / f"{validate_name(name, 'process name')}.pem"

    def key(self, name: str) -> pathlib.Path:
        return self.directory / f"{validate_name(name, 'process name')}.key"

    def names(self) -> list[str]:
        """Process names that have a certificate here, sorted."""
        return sorted(p.stem for p in self.directory.glob("*.pem") if p.name != _CA_CERT and p.stem)


# ---------------------------------------------------------------- certificates


def init_certs(
    directory: pathlib.Path,
    cluster: str,
    names: Sequence[str] | Mapping[str, str] = (),
    *,
    role: str = roles.NODE,
) -> ClusterCerts:
    """Make (or keep) the cluster CA, the name service secret and a certificate per name.

    ``names`` is a sequence of names all of ``role``, or a mapping name -> role.
    """
    validate_name(cluster, "cluster name")
    if isinstance(names, str):
        raise ConfigurationError(f"names for certificates of cluster {cluster} must be a sequence")
    wanted = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, role)
    for wanted_role in wanted.values():
        roles.validate_role(wanted_role)
    directory = pathlib.Path(directory)
    _make_private_dir(directory)
    certs = ClusterCerts(directory, cluster)
    with _locked(directory):
        _ensure_ca(certs)
        if not certs.secret.exists():
            _write_private(certs.secret, secrets.token_urlsafe(32).encode())
            log.info("made the name service secret of cluster %s in %s", cluster, directory)
        if not certs.client_secret.exists():
            member = _read(certs.secret, "name service secret").decode(errors="replace").strip()
            _write_private(certs.client_secret, _client_password(member).encode())
        for name, name_role in wanted.items():
            _ensure_cert(certs, name, name_role)
    return certs


def issue_cert(
    directory: pathlib.Path, cluster: str, name: str, role: str = roles.NODE
) -> ClusterCerts:
    """Make (or keep) the certificate of process ``name`` in ``role``; the CA must exist already.

    A certificate of that name with another role is replaced.
    """
    roles.validate_role(role)
    certs = load_certs(directory, cluster)
    with _locked(certs.directory):
        _ensure_cert(certs, name, role)
    return certs


def cert_role(directory: pathlib.Path, name: str) -> str | None:
    """The role the certificate of ``name`` carries (None when it carries none)."""
    certs = load_certs(directory)
    try:
        cert = x509.load_pem_x509_certificate(_read(certs.cert(name), f"certificate of {name}"))
    except ValueError as exc:
        raise ConfigurationError(f"certificate {certs.cert(name)} cannot be read: {exc}") from exc
    return _role_of(cert, certs.cluster)


def load_certs(directory: pathlib.Path, cluster: str | None = None) -> ClusterCerts:
    """The certificate directory made by :func:`init_certs`; ConfigurationError if it is not one."""
    directory = pathlib.Path(directory)
    ca_path = directory / _CA_CERT
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"no cluster CA in {directory}: make one with init_certs first"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cluster CA {ca_path} cannot be read: {exc}") from exc
    found = _cluster_of(ca)
    if found is None:
        raise ConfigurationError(f"{ca_path} is not the CA of a hermesx cluster")
    if cluster is not None and found != cluster:
        raise ConfigurationError(
            f"certificates in {directory} belong to cluster {found}, not {cluster}"
        )
    return ClusterCerts(directory, found)


def _ensure_ca(certs: ClusterCerts) -> None:
    if certs.ca_cert.exists():
        # Never replace a CA: every certificate issued by it would stop working.
        existing = load_certs(certs.directory)
        if existing.cluster != certs.cluster:
            raise ConfigurationError(
                f"{certs.directory} holds the CA of cluster {existing.cluster}, "
                f"not of {certs.cluster}"
            )
        if not (certs.directory / _CA_KEY).exists():
            raise ConfigurationError(f"CA key {certs.directory / _CA_KEY} is missing")
        return
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hermesx"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _short(certs.cluster)),
            x509.NameAttribute(NameOID.COMMON_NAME, _short(f"hermesx cluster {certs.cluster} CA")),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"{_URI_SCHEME}{certs.cluster}")]
            ),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    # Key first: a CA certificate without its key would look complete.
    _write_private(certs.directory / _CA_KEY, _key_pem(key))
    _write_public(certs.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    log.info("made the CA of cluster %s in %s", certs.cluster, certs.directory)


def _ensure_cert(certs: ClusterCerts, name: str, role: str = roles.NODE) -> None:
    cert_path, key_path = certs.cert(name), certs.key(name)
    ca_cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    if cert_path.exists() and key_path.exists() and _still_good(cert_path, ca_cert, role):
        return
    ca_key = serialization.load_pem_private_key((certs.directory / _CA_KEY).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"CA key in {certs.directory} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [
        x509.DNSName(TARGET_NAME),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier(f"{_URI_SCHEME}{certs.cluster}/{name}"),
        x509.UniformResourceIdentifier(f"{_ROLE_SCHEME}{certs.cluster}/{role}"),
    ]
    if all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        alt_names.insert(2, x509.DNSName(name))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hermesx"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _short(certs.cluster)),
                    x509.NameAttribute(NameOID.COMMON_NAME, _short(name)),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued the certificate of %s (role %s) in cluster %s", name, role, certs.cluster)


def _still_good(cert_path: pathlib.Path, ca_cert: x509.Certificate, role: str) -> bool:
    """True if the certificate is signed by this CA, of ``role`` and not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    cluster = _cluster_of(ca_cert)
    if cluster is None or _role_of(cert, cluster) != role:
        return False
    return cert.not_valid_after_utc > _now() + datetime.timedelta(days=_RENEW_DAYS)


def _role_of(cert: x509.Certificate, cluster: str) -> str | None:
    """The role marker ``hermesx-role://<cluster>/<role>`` of a certificate."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    prefix = f"{_ROLE_SCHEME}{cluster}/"
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(prefix) and uri[len(prefix) :] in roles.ROLES:
            return uri[len(prefix) :]
    return None


def _cluster_of(ca: x509.Certificate) -> str | None:
    """The cluster a CA belongs to, from its ``hermesx://<cluster>`` marker."""
    try:
        sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_URI_SCHEME) and "/" not in uri[len(_URI_SCHEME) :]:
            return uri[len(_URI_SCHEME) :] or None
    return None


def _short(text: str) -> str:
    # X.509 caps these attributes at 64 characters; names may hold 128. The
    # full names live in the URI markers, which have no such cap.
    return text if len(text) <= 64 else text[:63] + "~"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_private_dir(directory: pathlib.Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is masked by the umask and ignored for an existing one.
        directory.chmod(0o700)
        for path in directory.iterdir():
            # Another process (or thread) issuing at the same time may rename its
            # temporary file away between the listing and the look at it.
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mode & 0o077:
                    path.chmod(0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot make certificate directory {directory}: {exc}") from exc


@contextlib.contextmanager
def _locked(directory: pathlib.Path) -> Iterator[None]:
    # Several processes of a local cluster start at once and may all issue.
    with os.fdopen(os.open(directory / _LOCK, os.O_WRONLY | os.O_CREAT, 0o600), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_private(path: pathlib.Path, data: bytes) -> None:
    _write_atomically(path, data, 0o600)


def _write_public(path: pathlib.Path, data: bytes) -> None:
    # Certificates hold no secret, but nothing of a cluster is another local
    # user's business (they name every process and the cluster's CA).
    _write_atomically(path, data, 0o600)


def _write_atomically(path: pathlib.Path, data: bytes, mode: int) -> None:
    # The mode is set at creation so a key is never readable by others, even briefly.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {path}: {exc}") from exc


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"no {what} at {path}: issue it with init_certs or issue_cert"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} at {path}: {exc}") from exc


# ------------------------------------------------------------- gRPC credentials


def server_credentials(directory: pathlib.Path, name: str) -> grpc.ServerCredentials:
    """TLS for a server of process ``name``: clients must present a certificate of this CA."""
    certs = load_certs(directory)
    return grpc.ssl_server_credentials(
        [
            (
                _read(certs.key(name), f"key of {name}"),
                _read(certs.cert(name), f"certificate of {name}"),
            )
        ],
        root_certificates=_read(certs.ca_cert, "cluster CA"),
        require_client_auth=True,
    )


def channel_credentials(directory: pathlib.Path, name: str) -> grpc.ChannelCredentials:
    """TLS for channels of process ``name``: shows its certificate, trusts only the cluster CA."""
    certs = load_certs(directory)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(certs.ca_cert, "cluster CA"),
        private_key=_read(certs.key(name), f"key of {name}"),
        certificate_chain=_read(certs.cert(name), f"certificate of {name}"),
    )


def channel_options() -> list[tuple[str, Any]]:
    """Options every secure channel needs (add them to the usual channel options)."""
    return [("grpc.ssl_target_name_override", TARGET_NAME)]


# ------------------------------------------------- the call channel's TLS (same certificates)


def ssl_server_context(directory: pathlib.Path, name: str) -> ssl.SSLContext:
    """TLS of the call channel's listener of process ``name``: as :func:`server_credentials`,
    clients must show a certificate of the cluster CA."""
    certs = load_certs(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs.cert(name), certs.key(name))
    context.load_verify_locations(cadata=_read(certs.ca_cert, "cluster CA").decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def ssl_client_context(directory: pathlib.Path, name: str) -> ssl.SSLContext:
    """TLS of process ``name``'s call-channel connections: as :func:`channel_credentials`
    (shows its certificate, trusts only the cluster CA, expects :data:`TARGET_NAME`)."""
    certs = load_certs(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs.cert(name), certs.key(name))
    context.load_verify_locations(cadata=_read(certs.ca_cert, "cluster CA").decode())
    return context


def certificate_identity(cert: Mapping[str, Any] | None) -> PeerIdentity | None:
    """Who a verified peer certificate (:meth:`ssl.SSLObject.getpeercert`) names, as
    :func:`peer_identity` reads it from a gRPC call."""
    if not cert:
        return None
    sans = cert.get("subjectAltName", ())
    return _identity_of(tuple(value for key, value in sans if key == "URI"))


def zk_auth(directory: pathlib.Path, role: str = roles.NODE) -> tuple[str, str]:
    """(user, password) of the ZooKeeper digest identity of a process of ``role``.

    Members (nodes, storesites) use the cluster's secret, which may write the
    cluster's tree; every other role only reads the name service (clients never
    write it: nodes bind names and aliases), so it gets the read-only identity,
    from ``zk-client.secret`` (or derived from the secret where that is at hand).
    """
    certs = load_certs(directory)
    if role in roles.MEMBER_ROLES or not certs.client_secret.exists():
        secret = _read(certs.secret, "name service secret").decode(errors="replace").strip()
        if not secret:
            raise ConfigurationError(f"name service secret {certs.secret} is empty")
        if role in roles.MEMBER_ROLES:
            return (ZK_USER, secret)
        return (ZK_CLIENT_USER, _client_password(secret))
    password = _read(certs.client_secret, "client name service secret").decode(errors="replace")
    if not password.strip():
        raise ConfigurationError(f"client name service secret {certs.client_secret} is empty")
    return (ZK_CLIENT_USER, password.strip())


def zk_tls(directory: pathlib.Path, name: str) -> tuple[str, str, str] | None:
    """(CA, certificate, key) files of process ``name`` for ZooKeeper's secure client port.

    None unless the cluster's ZooKeeper speaks TLS: ``hermesx deploy`` marks
    such a cluster's certificate directories with :data:`ZK_TLS_MARKER`
    (docs/DESIGN.md §10); a local cluster's ZooKeeper listens on loopback only.
    """
    certs = load_certs(directory)
    if not (certs.directory / ZK_TLS_MARKER).exists():
        return None
    for path in (certs.cert(name), certs.key(name)):
        if not path.exists():
            raise ConfigurationError(
                f"{path} is missing: process {name} needs its certificate to reach the "
                "cluster's ZooKeeper over TLS"
            )
    return str(certs.ca_cert), str(certs.cert(name)), str(certs.key(name))


def zk_readers(directory: pathlib.Path) -> list[tuple[str, str]]:
    """The read-only identities members grant READ on every znode they create."""
    return [zk_auth(directory, roles.CLIENT)]


def _client_password(secret: str) -> str:
    # Derived, so members need no second file; one-way, so a client's
    # password reveals nothing of the members' secret.
    digest = hmac.new(secret.encode(), b"hermesx name service reader", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# ------------------------------------------------------------ peers of a call


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity | None:
    """The cluster member calling, from its certificate's marker; None without one."""
    return _identity_of(_peer_sans(context))


def _peer_sans(context: grpc.ServicerContext) -> tuple[Any, ...]:
    try:
        # The peer's identities are its certificate's subject alternative
        # names: reading them costs a third of building the whole auth context.
        return tuple(context.peer_identities() or ())
    except (ValueError, RuntimeError, AttributeError):
        return ()


def _identity_of(uris: tuple[Any, ...]) -> PeerIdentity | None:
    found: PeerIdentity | None = None
    role_markers: list[str] = []
    for raw in uris:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if text.startswith(_ROLE_SCHEME):
            role_markers.append(text[len(_ROLE_SCHEME) :])
            continue
        if found is not None or not text.startswith(_URI_SCHEME):
            continue
        cluster, sep, name = text[len(_URI_SCHEME) :].partition("/")
        if sep and cluster and name:
            found = PeerIdentity(cluster, name)
    if found is None:
        return None
    for marker in role_markers:
        cluster, sep, role = marker.partition("/")
        # A role counts only when issued by the same cluster as the name.
        if sep and cluster == found.cluster and role in roles.ROLES:
            return PeerIdentity(found.cluster, found.name, role)
    return found


def _describe_peer(context: grpc.ServicerContext) -> str:
    try:
        subject = context.auth_context().get("x509_subject", ())
    except (ValueError, RuntimeError):
        subject = ()
    shown = b",".join(subject).decode(errors="replace") if subject else "no certificate"
    return f"{context.peer()} ({shown})"


class PeerCheckInterceptor(grpc.ServerInterceptor):
    """Refuse, and log, every call whose certificate is not of cluster ``cluster``,
    or whose role may not call that RPC (with ``check_roles``, the default).

    Pass it to ``grpc.server(..., interceptors=[PeerCheckInterceptor(cluster)])``.
    """

    def __init__(self, cluster: str, *, server: str = "", check_roles: bool = True) -> None:
        self.cluster = validate_name(cluster, "cluster name")
        self._server = f"{server} " if server else ""
        self._check_roles = check_roles
        # Wrapped handlers by method: continuation() returns the same handler
        # object per method, so wrapping once keeps the per-call cost low.
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        # Identities by the certificate's names (verified by TLS, so equal
        # names mean an equal identity): parsing them every call costs more
        # than the rest of the check.
        self._identities: dict[tuple[Any, ...], PeerIdentity | None] = {}
        self._allowed: dict[str, frozenset[str]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _admit(self, context: grpc.ServicerContext, method: str) -> None:
        sans = _peer_sans(context)
        try:
            identity = self._identities[sans]
        except KeyError:
            identity = _identity_of(sans)
            if len(self._identities) >= 4096:
                self._identities.clear()
            self._identities[sans] = identity
        if identity is not None and identity.cluster == self.cluster:
            if self._check_roles:
                allowed = self._allowed.get(method)
                if allowed is None:
                    allowed = self._allowed[method] = roles.allowed_roles(method)
                if identity.role not in allowed:
                    self._refuse_role(context, method, identity, allowed)
            return
        reason = (
            "no certificate of a hermesx cluster"
            if identity is None
            else f"a certificate of cluster {identity.cluster}"
        )
        log.warning(
            "%srefused %s from %s: %s, not of cluster %s",
            self._server,
            method,
            _describe_peer(context),
            reason,
            self.cluster,
        )
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            f"{self._server}refused {method}: {reason}, not of cluster {self.cluster}",
        )

    def _refuse_role(
        self,
        context: grpc.ServicerContext,
        method: str,
        peer: PeerIdentity,
        allowed: frozenset[str],
    ) -> None:
        rpc = method.rpartition(".")[2] or method
        role = peer.role or "none (a certificate issued without a role)"
        refusal = NotAuthorizedError(
            f"{self._server}refused {rpc}: role {role} may not call it "
            f"(certificate {peer.name}; {rpc} is for {', '.join(sorted(allowed))})"
        )
        log.warning("%s (from %s)", refusal, context.peer())
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{refusal.kind}: {refusal}")

    def _wrap(self, handler: Any, method: str) -> Any:
        admit = self._admit
        # The same check in front of whichever of the four call shapes the RPC has.
        inner: Callable[[Any, grpc.ServicerContext], Any]
        if handler.unary_unary is not None:
            inner, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream is not None:
            inner, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary is not None:
            inner, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            inner, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            admit(context, method)
            return inner(request, context)

        return make(guarded, handler.request_deserializer, handler.response_serializer)
