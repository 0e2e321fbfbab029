"""Settings from the environment, and a cold start of the real processes.

Start-up failures run in a fresh interpreter: settings are read once per process.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings import channel_layer_from_env, database_from_url, sentinel_host

from .conftest import free_port

APP_DIR = Path(__file__).resolve().parent.parent
SETUP = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"


def run_python(code, env_overrides, drop=()):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDIS_", "CHAT_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "chatsite.settings", "PYTHONPATH": str(APP_DIR)})
    env.update(env_overrides)
    for key in drop:
        env.pop(key, None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


PRODUCTION = {"DJANGO_SECRET_KEY": "k" * 50, "DJANGO_ALLOWED_HOSTS": "chat.example.org"}


def test_production_settings_start():
    result = run_python(SETUP, PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", "DEBUG is off by default"


# Signs a user in under one key (as the site ran before a rotation), or reads
# whether that session is still signed in under the keys now in force.
SESSION = """
import sys, django
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import User
from django.test import Client
if sys.argv[1] == "sign-in":
    call_command("migrate", verbosity=0)
    User.objects.create_user("ann", password="correct horse battery staple")
    client = Client()
    assert client.login(username="ann", password="correct horse battery staple")
    print(client.cookies["sessionid"].value)
else:
    client = Client()
    client.cookies["sessionid"] = sys.argv[2]
    print(client.get("/").wsgi_request.user.is_authenticated)
"""


@pytest.mark.parametrize(("fallbacks", "signed_in"), [("o" * 50, "True"), ("", "False")])
def test_a_rotated_secret_key_keeps_sessions_through_its_fallbacks(tmp_path, fallbacks, signed_in):
    """Rotating DJANGO_SECRET_KEY with the old key in DJANGO_SECRET_KEY_FALLBACKS signs nobody out (README)."""
    database = {"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "DJANGO_ALLOWED_HOSTS": "testserver"}
    before = run_python(SESSION.replace("sys.argv[1]", "'sign-in'"), {**database, "DJANGO_SECRET_KEY": "o" * 50})
    assert before.returncode == 0, before.stderr
    session = before.stdout.strip()
    after = run_python(SESSION.replace("sys.argv[1]", "'check'").replace("sys.argv[2]", repr(session)),
                       {**database, "DJANGO_SECRET_KEY": "n" * 50, "DJANGO_SECRET_KEY_FALLBACKS": fallbacks})
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == signed_in


def test_missing_secret_key_with_debug_off_fails_clearly():
    result = run_python(SETUP, {"DJANGO_ALLOWED_HOSTS": "chat.example.org"})
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in result.stderr


def test_missing_secret_key_is_fine_with_debug_on():
    result = run_python(SETUP, {"DJANGO_DEBUG": "true"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_empty_allowed_hosts_with_debug_off_fails_clearly():
    result = run_python(SETUP, {"DJANGO_SECRET_KEY": "k" * 50})
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS is empty" in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DJANGO_DEBUG", "maybe", "DJANGO_DEBUG must be true or false"),
        ("CHAT_MESSAGE_MAX_LENGTH", "lots", "CHAT_MESSAGE_MAX_LENGTH must be a whole number"),
        ("CHAT_MESSAGE_MAX_LENGTH", "0", "CHAT_MESSAGE_MAX_LENGTH must be at least 1"),
        ("CHAT_RATE_PER_SECOND", "-5", "CHAT_RATE_PER_SECOND must be greater than 0"),
        ("CHAT_PAGE_RATE_PER_SECOND", "0", "CHAT_PAGE_RATE_PER_SECOND must be greater than 0"),
        ("CHAT_PAGE_BURST", "0", "CHAT_PAGE_BURST must be at least 1"),
        ("CHAT_MODERATION_BURST", "some", "CHAT_MODERATION_BURST must be a whole number"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must be redis://"),
        ("CHAT_CHANNEL_LAYER", "carrier-pigeon", "CHAT_CHANNEL_LAYER must be pubsub or core"),
        ("CHAT_REDIS_SOCKET_TIMEOUT", "0", "CHAT_REDIS_SOCKET_TIMEOUT must be greater than 0"),
        ("CHAT_REDIS_CONNECT_TIMEOUT", "soon", "CHAT_REDIS_CONNECT_TIMEOUT must be a number"),
        ("DATABASE_URL", "mysql://db/chat", "DATABASE_URL must start with postgresql://"),
        ("CHAT_METRICS_PORT", "70000", "CHAT_METRICS_PORT must be at most 65535"),
        ("CHAT_METRICS_PORT", "-1", "CHAT_METRICS_PORT must be at least 0"),
        ("CHAT_METRICS_ADDRESS", "http://0.0.0.0", "CHAT_METRICS_ADDRESS must be an IP address or host name"),
        ("CHAT_PROCESS_NUM", "first", "CHAT_PROCESS_NUM must be a whole number"),
        ("CHAT_GUESTS", "maybe", "CHAT_GUESTS must be post, read or off"),
        ("CHAT_OPEN_SIGNUP", "sometimes", "CHAT_OPEN_SIGNUP must be true or false"),
        ("CHAT_PROXY_TRUSTED", "10.0.0.1/24", "CHAT_PROXY_TRUSTED: '10.0.0.1/24' is not an IP address or network"),
    ],
)
def test_bad_values_fail_at_start_naming_the_variable(name, value, message):
    result = run_python(SETUP, {**PRODUCTION, name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_metrics_port_plus_process_number_past_the_last_port_fails_at_start():
    result = run_python(SETUP, {**PRODUCTION, "CHAT_METRICS_PORT": "65530", "CHAT_PROCESS_NUM": "6"})
    assert result.returncode != 0
    assert "CHAT_METRICS_PORT + CHAT_PROCESS_NUM is 65530 + 6 = 65536" in result.stderr


@pytest.mark.parametrize("port", ["", "0"], ids=["empty", "zero"])
def test_metrics_settings_default_to_no_server_on_the_loopback_address(port):
    show = SETUP + "; print(settings.CHAT_METRICS_PORT, settings.CHAT_METRICS_ADDRESS, settings.CHAT_PROCESS_NUM)"
    result = run_python(show, {**PRODUCTION, "CHAT_METRICS_PORT": port})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["0", "127.0.0.1", "0"]


@pytest.mark.parametrize("address", ["10.0.0.5", "::", "app1.example.org"])
def test_metrics_settings_from_the_environment(address):
    show = SETUP + "; print(settings.CHAT_METRICS_PORT, settings.CHAT_METRICS_ADDRESS, settings.CHAT_PROCESS_NUM)"
    metrics_env = {"CHAT_METRICS_PORT": "9100", "CHAT_METRICS_ADDRESS": f" {address} ", "CHAT_PROCESS_NUM": "3"}
    result = run_python(show, {**PRODUCTION, **metrics_env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["9100", address, "3"]


def test_without_redis_url_the_in_memory_layer_is_used_and_logged():
    result = run_python(SETUP + "; print(settings.CHANNEL_LAYERS['default']['BACKEND'])", PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "InMemoryChannelLayer" in result.stdout
    assert "REDIS_URL is not set: using the in-memory channel layer" in result.stderr


def test_channel_layer_from_redis_url():
    layer = channel_layer_from_env(["redis://:s%40cret@10.0.0.5:6379/2"], "pubsub")
    assert layer["BACKEND"] == "chat.layers.LeanRedisPubSubChannelLayer"
    assert layer["CONFIG"]["hosts"] == [
        {"address": "redis://:s%40cret@10.0.0.5:6379/2", "socket_connect_timeout": 1.0, "socket_timeout": 2.0}
    ]


def test_every_redis_connection_has_the_timeouts_from_the_environment():
    """Every host's, and the Sentinels'; the rate limiter and presence take the first host's options."""
    show = SETUP + (
        "; hosts = settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']"
        "; print([(h['socket_connect_timeout'], h['socket_timeout']) for h in hosts],"
        " [(h['sentinel_kwargs']['socket_connect_timeout'], h['sentinel_kwargs']['socket_timeout'])"
        " for h in hosts if 'sentinel_kwargs' in h])"
    )
    timeouts = {"CHAT_REDIS_CONNECT_TIMEOUT": "0.5", "CHAT_REDIS_SOCKET_TIMEOUT": "3"}
    sharded = run_python(show, {**PRODUCTION, "REDIS_URL": "redis://a:6379/0,redis://b:6379/0", **timeouts})
    assert sharded.stdout.splitlines()[-1] == "[(0.5, 3.0), (0.5, 3.0)] []", sharded.stderr
    sentinels = {"REDIS_SENTINELS": "10.0.0.5:26379", "REDIS_SENTINEL_MASTER": "chat"}
    through_sentinel = run_python(show, {**PRODUCTION, **sentinels, **timeouts})
    assert through_sentinel.stdout.splitlines()[-1] == "[(0.5, 3.0)] [(0.5, 3.0)]", through_sentinel.stderr


def test_channel_layer_shards_over_several_redis_urls():
    layer = channel_layer_from_env(["redis://a:6379/0", "redis://b:6379/0"], "core")
    assert layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert [host["address"] for host in layer["CONFIG"]["hosts"]] == ["redis://a:6379/0", "redis://b:6379/0"]
    # redis-py's default pool of 100 connections would fail handshakes under load.
    assert all(host["max_connections"] >= 1000 for host in layer["CONFIG"]["hosts"])


def test_channel_layer_through_redis_sentinel():
    sentinel = sentinel_host(["10.0.0.5:26379", "10.0.0.6:26379"], "chat", "s3cret")
    layer = channel_layer_from_env([], "pubsub", sentinel=sentinel)
    retry = layer["CONFIG"]["hosts"][0]["sentinel_kwargs"].pop("retry")
    assert retry.get_retries() == 0  # the next Sentinel is the retry (test_layer_failover)
    assert layer["CONFIG"]["hosts"] == [
        {
            "sentinels": [("10.0.0.5", 26379), ("10.0.0.6", 26379)],
            "master_name": "chat",
            "password": "s3cret",
            "socket_connect_timeout": 1.0,
            "socket_timeout": 2.0,
            "sentinel_kwargs": {"socket_connect_timeout": 1.0, "socket_timeout": 2.0, "password": "s3cret"},
        }
    ]


def test_sentinels_on_ipv6_addresses_are_given_bare_to_the_socket():
    sentinel = sentinel_host(["[fd00::5]:26379", "[fd00::6]:26380"], "chat", "s3cret")
    assert sentinel["sentinels"] == [("fd00::5", 26379), ("fd00::6", 26380)]


@pytest.mark.parametrize(("sentinels", "master", "message"), [(["10.0.0.5"], "chat", "host:port"), (["a:1"], "", "MASTER")])
def test_bad_sentinel_settings_are_refused(sentinels, master, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        sentinel_host(sentinels, master, "")


def test_database_url_for_postgresql():
    database = database_from_url("postgresql://chat:p%40ss@db.internal:5433/chat")
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["NAME"], database["USER"], database["PASSWORD"]) == ("chat", "chat", "p@ss")
    assert (database["HOST"], database["PORT"]) == ("db.internal", "5433")


def test_database_url_query_is_given_to_libpq():
    database = database_from_url(
        "postgresql://chat:pw@10.0.0.5:5432/chat?sslmode=verify-full&sslrootcert=/etc/ssl/chat/ca.crt"
    )
    assert database["NAME"] == "chat"
    assert database["OPTIONS"] == {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/chat/ca.crt"}


def test_database_url_without_a_name_is_refused():
    with pytest.raises(ImproperlyConfigured, match="names no database"):
        database_from_url("postgresql://chat@db.internal/")


def test_sqlite_path_is_configurable(tmp_path):
    path = tmp_path / "chat.sqlite3"
    result = run_python(SETUP + "; print(settings.DATABASES['default']['NAME'])", {**PRODUCTION, "DJANGO_SQLITE_PATH": str(path)})
    assert result.stdout.splitlines()[-1] == str(path)


def test_proxy_settings_are_off_unless_asked_for():
    code = SETUP + "; print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None), settings.SESSION_COOKIE_SECURE)"
    assert run_python(code, PRODUCTION).stdout.splitlines()[-1] == "None False"
    behind_tls = {**PRODUCTION, "DJANGO_SECURE_PROXY_SSL_HEADER": "true", "DJANGO_HTTPS": "true"}
    assert run_python(code, behind_tls).stdout.splitlines()[-1] == "('HTTP_X_FORWARDED_PROTO', 'https') True"


def test_healthz_is_503_naming_the_database_when_it_cannot_be_opened(tmp_path):
    code = (
        "import django; django.setup(); from django.test import Client; "
        "r = Client().get('/healthz'); print(r.status_code, r.content.decode())"
    )
    result = run_python(code, {**PRODUCTION, "DJANGO_ALLOWED_HOSTS": "testserver",
                               "DJANGO_SQLITE_PATH": str(tmp_path / "missing-dir" / "db.sqlite3")})
    status, body = result.stdout.strip().split(" ", 1)
    assert status == "503", result.stderr
    assert json.loads(body)["failing"] == ["database"]


def test_runserver_works_with_nothing_set(tmp_path):
    """A developer's first run: no Redis, no settings, a fresh database; two clients chat."""
    import asyncio

    import websockets

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "REDIS_", "CHAT_"))}
    env["DJANGO_SQLITE_PATH"] = str(tmp_path / "dev.sqlite3")
    server = subprocess.Popen(
        [sys.executable, str(APP_DIR / "manage.py"), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/chat/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "runserver did not answer within 30 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"{base}/static/chat/room.js", timeout=5) as response:
            assert b'from "./session.js";' in response.read()
        with urllib.request.urlopen(f"{base}/static/chat/session.js", timeout=5) as response:
            assert b"WebSocket" in response.read()

        async def chat():
            url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
            async with websockets.connect(url, origin=base) as ann, websockets.connect(url, origin=base) as bob:
                await ann.send(json.dumps({"message": "hi from runserver", "user": "ann"}))
                return [json.loads(await asyncio.wait_for(c.recv(), 5)) for c in (ann, bob)]

        for got in asyncio.run(chat()):
            assert (got["user"], got["message"]) == ("ann", "hi from runserver")
    finally:
        server.terminate()
        server.wait(timeout=10)
