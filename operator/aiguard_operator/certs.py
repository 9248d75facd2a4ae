"""Certificates for the operator's admission webhook server, made with ``cryptography``.

kopf can generate a self-signed certificate itself, but that path needs ``certbuilder`` and
``oscrypto``, and oscrypto fails to detect OpenSSL 3 here. So the operator brings its own CA.

Files in the certificate directory (PEM)::

    ca.crt       the CA that signs the serving certificate
    ca.key       its private key (0600)
    ca-bundle.crt what the API server trusts (``caBundle``): the current CA, plus the previous
                 CA while it is still valid, so a CA rotation never breaks a running webhook
    tls.crt      the serving certificate (SANs: the webhook's hosts/IPs)
    tls.key      its private key (0600)

Rotation (:func:`ensure_certs`, run at startup and periodically):

* the serving certificate is re-issued when it is missing, unreadable, does not cover the
  wanted hosts, is not signed by the current CA, or expires within ``serving_renew_before``.
  It is signed by the same CA, so the ``caBundle`` does not change and nothing is interrupted;
* the CA is replaced when it expires within ``ca_renew_before``. The new CA enters the bundle
  at once, next to the old one; the serving certificate switches to the new CA only after
  ``ca_propagation`` has passed, so the API server has the new bundle before it sees a
  certificate signed by the new CA (unless the old serving certificate would expire first).

kopf's :class:`kopf.WebhookServer` re-reads the files when they change and re-registers the
``caBundle``, so rotating files on disk is all a running operator needs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_BUNDLE = "ca-bundle.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

#: Backdating of notBefore, for clocks that are slightly behind.
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class RotationPolicy:
    """Lifetimes and renewal windows. Defaults suit a long-running operator."""

    ca_validity: dt.timedelta = dt.timedelta(days=3650)
    """Lifetime of a new CA."""
    ca_renew_before: dt.timedelta = dt.timedelta(days=365)
    """Replace the CA when it has less than this left."""
    ca_propagation: dt.timedelta = dt.timedelta(hours=1)
    """How long a new CA sits in the bundle before it signs the serving certificate."""
    serving_validity: dt.timedelta = dt.timedelta(days=365)
    """Lifetime of a new serving certificate (never beyond its CA)."""
    serving_renew_before: dt.timedelta = dt.timedelta(days=30)
    """Re-issue the serving certificate when it has less than this left."""


@dataclass(frozen=True)
class CertPaths:
    """Where the files of one webhook server live."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.dir / CA_KEY

    @property
    def ca_bundle(self) -> Path:
        return self.dir / CA_BUNDLE

    @property
    def cert(self) -> Path:
        return self.dir / TLS_CERT

    @property
    def key(self) -> Path:
        return self.dir / TLS_KEY


@dataclass
class Outcome:
    """What :func:`ensure_certs` did, for logs and events."""

    paths: CertPaths
    changed: list[str] = field(default_factory=list)
    """Human-readable actions, e.g. ``"issued serving certificate (new CA)"``; empty if none."""
    deferred: str | None = None
    """Why a wanted change waits for a later run (CA propagation), if it does."""
    serving_not_after: dt.datetime | None = None
    ca_not_after: dt.datetime | None = None


# --------------------------------------------------------------------------- building blocks


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (temp file + rename), 0600 for keys."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    *, now: dt.datetime, validity: dt.timedelta, common_name: str = "aiguard-webhook-ca"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key (ECDSA P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    # The date in the name keeps successive CAs apart in the bundle and in logs.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} {now:%Y-%m-%d %H:%M}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aiguard"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_serving_cert(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
    now: dt.datetime,
    validity: dt.timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A serving certificate for ``hosts`` (DNS names or IPs), never outliving its CA."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or IP")
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def sans_of(cert: x509.Certificate) -> set[str]:
    """The DNS names and IPs a certificate is valid for."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names: set[str] = set(ext.get_values_for_type(x509.DNSName))
    names.update(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))
    return names


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` issued ``cert`` (signature checked, not just names)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _load_bundle(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _normalise_hosts(hosts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for host in hosts:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            host = host.lower()
        if host not in out:
            out.append(host)
    return out


# --------------------------------------------------------------------------- the policy


def ensure_certs(
    directory: Path,
    *,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    policy: RotationPolicy | None = None,
) -> Outcome:
    """Create or rotate the webhook certificates in ``directory``; idempotent.

    Safe to call at every start and then periodically: it changes files only when a
    certificate is missing, wrong for ``hosts``, or close to expiry (see the module docs).
    """
    now = now or _now()
    policy = policy or RotationPolicy()
    wanted_hosts = _normalise_hosts(hosts)
    paths = CertPaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(paths=paths)

    # 1. the CA
    ca_cert, ca_key = _load_cert(paths.ca_cert), _load_ec_key(paths.ca_key)
    on_disk = _load_bundle(paths.ca_bundle)
    trusted = list(on_disk)
    ca_is_new = False
    if (
        ca_cert is None
        or ca_key is None
        or ca_cert.public_key() != ca_key.public_key()
        or ca_cert.not_valid_after_utc - now < policy.ca_renew_before
    ):
        previous = ca_cert if ca_cert is not None and ca_cert.not_valid_after_utc > now else None
        ca_cert, ca_key = make_ca(now=now, validity=policy.ca_validity)
        _write(paths.ca_key, _key_pem(ca_key), private=True)
        _write(paths.ca_cert, _cert_pem(ca_cert))
        if previous is not None:
            trusted.append(previous)
        outcome.changed.append("created CA" if previous is None else "rotated CA")
        ca_is_new = previous is not None
    # The bundle: the current CA first, then the still-valid others it already trusted.
    fresh_bundle = [ca_cert]
    for c in trusted:
        if c not in fresh_bundle and c.not_valid_after_utc > now:
            fresh_bundle.append(c)
    if [_cert_pem(c) for c in fresh_bundle] != [_cert_pem(c) for c in on_disk]:
        _write(paths.ca_bundle, b"".join(_cert_pem(c) for c in fresh_bundle))
        if not outcome.changed:
            outcome.changed.append("rewrote CA bundle")
    outcome.ca_not_after = ca_cert.not_valid_after_utc

    # 2. the serving certificate
    cert, key = _load_cert(paths.cert), _load_ec_key(paths.key)
    reasons: list[str] = []
    if cert is None or key is None or cert.public_key() != key.public_key():
        reasons.append("missing")
    else:
        if sans_of(cert) != set(wanted_hosts):
            reasons.append(f"hosts changed to {', '.join(wanted_hosts)}")
        if cert.not_valid_after_utc - now < policy.serving_renew_before:
            reasons.append("close to expiry")
        if not signed_by(cert, ca_cert):
            reasons.append("signed by another CA")

    if reasons and cert is not None and reasons == ["signed by another CA"]:
        # Only the CA changed. Wait until the new bundle has reached the API server, unless
        # the current certificate is not trusted any more or would expire meanwhile.
        ca_age = now - (ca_cert.not_valid_before_utc + CLOCK_SKEW)
        still_trusted = any(signed_by(cert, c) for c in fresh_bundle)
        expires_soon = cert.not_valid_after_utc - now < policy.ca_propagation * 2
        if (ca_is_new or ca_age < policy.ca_propagation) and still_trusted and not expires_soon:
            outcome.deferred = (
                "serving certificate stays on the previous CA until the new CA bundle has "
                f"propagated ({policy.ca_propagation})"
            )
            reasons = []

    if reasons:
        cert, key = make_serving_cert(
            ca_cert=ca_cert,
            ca_key=ca_key,
            hosts=wanted_hosts,
            now=now,
            validity=policy.serving_validity,
        )
        # Key first: a reader that sees the new certificate must find the matching key.
        _write(paths.key, _key_pem(key), private=True)
        _write(paths.cert, _cert_pem(cert))
        outcome.changed.append(f"issued serving certificate ({'; '.join(reasons)})")
    outcome.serving_not_after = cert.not_valid_after_utc if cert is not None else None
    return outcome
