"""certs.py: the webhook CA and serving certificate, created once and rotated in time."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from aiguard_operator import certs

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
HOSTS = ["127.0.0.1", "localhost"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def bundle(paths: certs.CertPaths) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(paths.ca_bundle.read_bytes())


def test_fresh_directory_gets_a_ca_and_a_serving_certificate(tmp_path: Path) -> None:
    outcome = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW)
    paths = outcome.paths

    assert outcome.changed == ["created CA", "issued serving certificate (missing)"]
    ca, cert = load(paths.ca_cert), load(paths.cert)
    assert certs.signed_by(cert, ca)
    assert certs.sans_of(cert) == {"127.0.0.1", "localhost"}
    assert bundle(paths) == [ca]
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    for key in (paths.key, paths.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_second_run_changes_nothing(tmp_path: Path) -> None:
    certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    outcome = certs.ensure_certs(
        tmp_path, hosts=list(reversed(HOSTS)), now=NOW + dt.timedelta(days=1)
    )

    assert outcome.changed == []
    assert outcome.deferred is None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_new_hosts_reissue_the_serving_certificate_from_the_same_ca(tmp_path: Path) -> None:
    first = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW)
    ca_before = first.paths.ca_cert.read_bytes()

    outcome = certs.ensure_certs(tmp_path, hosts=[*HOSTS, "aiguard.aiguard-system.svc"], now=NOW)

    assert outcome.changed == [
        "issued serving certificate (hosts changed to 127.0.0.1, localhost, "
        "aiguard.aiguard-system.svc)"
    ]
    assert first.paths.ca_cert.read_bytes() == ca_before
    assert "aiguard.aiguard-system.svc" in certs.sans_of(load(first.paths.cert))


def test_serving_certificate_is_renewed_before_it_expires_without_touching_the_bundle(
    tmp_path: Path,
) -> None:
    paths = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW).paths
    bundle_before = paths.ca_bundle.read_bytes()
    later = NOW + dt.timedelta(days=340)  # 25 days left, renewal window is 30

    outcome = certs.ensure_certs(tmp_path, hosts=HOSTS, now=later)

    assert outcome.changed == ["issued serving certificate (close to expiry)"]
    assert paths.ca_bundle.read_bytes() == bundle_before  # caBundle unchanged: no disruption
    assert load(paths.cert).not_valid_after_utc == later + dt.timedelta(days=365)


def test_ca_rotation_puts_both_cas_in_the_bundle_and_switches_the_certificate_later(
    tmp_path: Path,
) -> None:
    policy = certs.RotationPolicy(
        ca_validity=dt.timedelta(days=100),
        ca_renew_before=dt.timedelta(days=30),
        serving_validity=dt.timedelta(days=60),
        serving_renew_before=dt.timedelta(days=5),
    )
    paths = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW, policy=policy).paths
    old_ca, old_cert = load(paths.ca_cert), load(paths.cert)
    day_75 = NOW + dt.timedelta(days=75)  # CA has 25 days left: rotate it
    # the serving certificate was capped at the CA... renewed on day 56 in real life:
    certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW + dt.timedelta(days=56), policy=policy)
    old_cert = load(paths.cert)

    rotated = certs.ensure_certs(tmp_path, hosts=HOSTS, now=day_75, policy=policy)

    new_ca = load(paths.ca_cert)
    assert rotated.changed == ["rotated CA"]
    assert rotated.deferred is not None
    assert "propagated" in rotated.deferred
    assert bundle(paths) == [new_ca, old_ca]
    assert load(paths.cert) == old_cert  # still served, still trusted via the bundle

    after = certs.ensure_certs(
        tmp_path, hosts=HOSTS, now=day_75 + dt.timedelta(hours=2), policy=policy
    )

    assert after.changed == ["issued serving certificate (signed by another CA)"]
    assert certs.signed_by(load(paths.cert), new_ca)

    gone = certs.ensure_certs(
        tmp_path, hosts=HOSTS, now=NOW + dt.timedelta(days=101), policy=policy
    )

    assert gone.changed == ["rewrote CA bundle"]
    assert bundle(paths) == [new_ca]  # the expired CA leaves the bundle


def test_a_key_that_does_not_match_its_certificate_is_replaced(tmp_path: Path) -> None:
    paths = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW).paths
    other = tmp_path / "other"
    paths.key.write_bytes(certs.ensure_certs(other, hosts=HOSTS, now=NOW).paths.key.read_bytes())

    outcome = certs.ensure_certs(tmp_path, hosts=HOSTS, now=NOW)

    assert outcome.changed == ["issued serving certificate (missing)"]


def test_a_client_trusting_the_bundle_completes_a_tls_handshake(tmp_path: Path) -> None:
    paths = certs.ensure_certs(tmp_path, hosts=HOSTS).paths
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths.cert, paths.key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_bundle))

    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break

    assert all(done.values())
    assert client.version() == "TLSv1.3"


def test_no_hosts_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one host"):
        certs.ensure_certs(tmp_path, hosts=[], now=NOW)
