"""The channel layer over TLS, as a multi-host site runs it (the redis role's internal CA).

A Redis server and a Sentinel of the test's own that speak TLS only (port 0, tls-port), with certificates
from a CA the test makes, and the layer configured as the settings build it from REDIS_URL (rediss://)
or REDIS_SENTINELS, with REDIS_TLS_CA_FILE. The layer works through both; a plain-text client is refused;
a client that trusts another CA, or expects another name, does not connect.
"""

import asyncio
import datetime
import ipaddress
import shutil
import subprocess

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.test import override_settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from chat.layers import LeanRedisPubSubChannelLayer
from chat.ratelimit import redis_from_layer_settings
from chatsite.settings import channel_layer_from_env, sentinel_host

from .conftest import free_port, wait_until

PASSWORD = "tls-test-password-0123456789"
MASTER = "chat"


def make_ca(directory, name):
    """A CA's key and self-signed certificate, written to directory/name.crt; returns (key, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_server_certificate(directory, ca_key, ca_cert, address):
    """A server certificate for an IP address, signed by the CA; returns (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def client(host="127.0.0.1", **options):
    """A client that fails at once (redis-py retries three times by default)."""
    return redis.Redis(host=host, password=PASSWORD, socket_timeout=5, retry=Retry(NoBackoff(), 0), **options)


@pytest.fixture
def tls_site(tmp_path):
    """(CA file, a CA file nobody signed for, master's TLS port, Sentinel's TLS port), the servers running."""
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (apt-get install redis-server)"
    ca_key, ca_cert = make_ca(tmp_path, "ca")
    make_ca(tmp_path, "other-ca")
    cert, key = make_server_certificate(tmp_path, ca_key, ca_cert, "127.0.0.1")
    ca = tmp_path / "ca.crt"
    ports = {"master": free_port(), "sentinel": free_port()}
    # As the redis role writes redis.conf and sentinel.conf with TLS on.
    tls = ["--port", "0", "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
           "--tls-auth-clients", "no", "--tls-replication", "yes"]
    processes = [
        subprocess.Popen(
            [server, "--tls-port", str(ports["master"]), *tls, "--bind", "127.0.0.1", "127.0.0.2", "--save", "",
             "--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )
    ]
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"bind 127.0.0.1\nrequirepass {PASSWORD}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {ports['master']} 1\nsentinel auth-pass {MASTER} {PASSWORD}\n"
    )
    try:
        processes.append(
            subprocess.Popen([server, str(config), "--sentinel", "--tls-port", str(ports["sentinel"]), *tls,
                              "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
        )
        for port in ports.values():
            server_client = client(port=port, ssl=True, ssl_ca_certs=str(ca))
            wait_until(server_client.ping)
        yield str(ca), str(tmp_path / "other-ca.crt"), ports["master"], ports["sentinel"]
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


async def round_trip(layer_settings):
    layer = LeanRedisPubSubChannelLayer(**layer_settings["CONFIG"])
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.group_send("room", {"type": "chat.message", "text": "over TLS"})
        return (await asyncio.wait_for(layer.receive(channel), 10))["text"]
    finally:
        await layer.flush()


async def test_the_layer_and_the_rate_limiter_work_over_tls_verified_against_the_ca(tls_site):
    ca, _, master_port, sentinel_port = tls_site
    direct = channel_layer_from_env([f"rediss://:{PASSWORD}@127.0.0.1:{master_port}/0"], "pubsub", tls_ca_file=ca)
    assert await round_trip(direct) == "over TLS"
    through_sentinel = channel_layer_from_env(
        [], "pubsub", sentinel=sentinel_host([f"127.0.0.1:{sentinel_port}"], MASTER, PASSWORD, tls_ca_file=ca)
    )
    assert await round_trip(through_sentinel) == "over TLS"
    for layer_settings in (direct, through_sentinel):
        with override_settings(CHANNEL_LAYERS={"default": layer_settings}):
            limiter_redis = redis_from_layer_settings()
        try:
            assert await limiter_redis.ping()
        finally:
            await limiter_redis.aclose()


def test_a_plain_text_client_is_refused(tls_site):
    _, _, master_port, sentinel_port = tls_site
    for port in (master_port, sentinel_port):
        with pytest.raises(redis.ConnectionError):
            client(port=port).ping()


def test_a_client_that_trusts_another_ca_or_expects_another_name_does_not_connect(tls_site):
    ca, other_ca, master_port, _ = tls_site
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client(port=master_port, ssl=True, ssl_ca_certs=other_ca).ping()
    # The certificate names 127.0.0.1 only; the server listens on 127.0.0.2 too.
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client("127.0.0.2", port=master_port, ssl=True, ssl_ca_certs=ca).ping()


def test_a_plain_redis_url_with_a_tls_ca_is_a_configuration_error():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="rediss://"):
        channel_layer_from_env(["redis://127.0.0.1:6379/0"], "pubsub", tls_ca_file="/etc/ssl/chat/ca.crt")
