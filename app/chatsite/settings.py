"""Settings for the chat service.

Everything an operator sets comes from the environment, read here and nowhere
else. The defaults are the safe ones for production: DEBUG off, no hosts
allowed until named, secrets required. `manage.py runserver` is the one place
that switches DEBUG on by default, for a developer's machine.
"""

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chat.proxy import parse_networks

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default=False):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    value = value.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}.")


def env_int(name, default, minimum=1, maximum=None):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}.") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, not {number}.")
    return number


HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def env_listen_address(name, default):
    """An address to listen on: an IP address or, as the deployment may give one, a host name."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if HOST_NAME.fullmatch(value):
            return value
    raise ImproperlyConfigured(
        f"{name} must be an IP address or host name to listen on (127.0.0.1, 0.0.0.0, ::1), not {value!r}."
    )


def env_float(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}.") from None
    if number <= 0:
        raise ImproperlyConfigured(f"{name} must be greater than 0, not {number}.")
    return number


def env_list(name):
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def check_metrics_port(base_port, process_num):
    """Each server process serves its metrics on base_port + its number (0: none); that must be a port."""
    if base_port and base_port + process_num > 65535:
        raise ImproperlyConfigured(
            f"CHAT_METRICS_PORT + CHAT_PROCESS_NUM is {base_port} + {process_num} = {base_port + process_num}, "
            "past the last port (65535): lower CHAT_METRICS_PORT."
        )


def database_from_url(url):
    """The DATABASES entry for a postgres:// or postgresql:// URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL must start with postgresql://, not {parts.scheme or url!r}:// "
            "(leave it unset to use SQLite)."
        )
    name = parts.path.lstrip("/")
    if not name:
        raise ImproperlyConfigured("DATABASE_URL names no database (postgresql://user:pass@host:5432/NAME).")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(name),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # The URL's query is libpq's: ?sslmode=verify-full&sslrootcert=/path/ca.crt
        # makes the connection TLS, verified against that CA and the host's name.
        "OPTIONS": dict(parse_qsl(parts.query)),
        # Keep connections between requests; the health check notices dead ones.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def redis_tls_options(ca_file):
    """redis-py's options for TLS verified against the CA in ca_file (and the server's name or address)."""
    return {"ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True}


# CHAT_REDIS_CONNECT_TIMEOUT and CHAT_REDIS_SOCKET_TIMEOUT's defaults, in seconds (see where they are read).
REDIS_CONNECT_TIMEOUT = 1.0
REDIS_SOCKET_TIMEOUT = 2.0


def redis_timeouts(connect_timeout, socket_timeout):
    """redis-py's options for how long a connection may take to open, and a command's reply to come."""
    return {"socket_connect_timeout": connect_timeout, "socket_timeout": socket_timeout}


def sentinel_host(sentinels, master, password, tls_ca_file="", connect_timeout=REDIS_CONNECT_TIMEOUT,
                  socket_timeout=REDIS_SOCKET_TIMEOUT):
    """A channels-redis host entry that finds the master through Redis Sentinel.

    With tls_ca_file, the Sentinels and the master are reached over TLS,
    each verified against that CA. The timeouts are the Sentinels' as well
    as the master's.
    """
    addresses = []
    for sentinel in sentinels:
        host, _, port = sentinel.rpartition(":")
        if not host or not port.isdigit():
            raise ImproperlyConfigured(f"REDIS_SENTINELS must list host:port entries, not {sentinel!r}.")
        # An IPv6 address comes in brackets, as in a URL ([fd00::5]:26379); the socket wants it bare.
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        addresses.append((host, int(port)))
    if not master:
        raise ImproperlyConfigured("REDIS_SENTINEL_MASTER must name the master the sentinels watch.")
    # A Sentinel or a master on a host that is down answers nothing: the
    # short timeouts move on to the next Sentinel (or retry) within a second
    # or two instead of the system's minutes, which would stretch a failover.
    # And no retries of a Sentinel (redis-py's clients retry a connection ten
    # times by default): the next Sentinel in the list is the retry.
    timeouts = redis_timeouts(connect_timeout, socket_timeout)
    host = {"sentinels": addresses, "master_name": master, **timeouts,
            "sentinel_kwargs": {**timeouts, "retry": Retry(NoBackoff(), 0)}}
    if password:
        # The same password for the master and for the Sentinels (as the redis role deploys them).
        host["password"] = password
        host["sentinel_kwargs"]["password"] = password
    if tls_ca_file:
        host.update(ssl=True, **redis_tls_options(tls_ca_file))
        host["sentinel_kwargs"].update(ssl=True, **redis_tls_options(tls_ca_file))
    return host


def channel_layer_from_env(redis_urls, layer, sentinel=None, tls_ca_file="", connect_timeout=REDIS_CONNECT_TIMEOUT,
                           socket_timeout=REDIS_SOCKET_TIMEOUT):
    """The channel layer: Redis when REDIS_URL (or Sentinel) is set, in-memory otherwise.

    REDIS_URL may list several servers, comma-separated, to shard the layer;
    `sentinel` is a host entry from sentinel_host() instead, for failover.
    With tls_ca_file (REDIS_TLS_CA_FILE), every URL must be rediss:// and the
    servers' certificates are verified against that CA. The timeouts are
    every connection's: the layer's, and the rate limiter's and presence's,
    which take the first host's options.
    """
    if layer not in {"pubsub", "core"}:
        raise ImproperlyConfigured(f"CHAT_CHANNEL_LAYER must be pubsub or core, not {layer!r}.")
    if sentinel:
        hosts = [sentinel]
    elif redis_urls:
        for url in redis_urls:
            scheme = urlsplit(url).scheme
            if scheme not in {"redis", "rediss", "unix"}:
                raise ImproperlyConfigured(f"REDIS_URL must be redis://[:password@]host:port/db, not {url!r}.")
            if tls_ca_file and scheme != "rediss":
                raise ImproperlyConfigured(
                    f"REDIS_TLS_CA_FILE is set, so REDIS_URL must be rediss:// (TLS), not {scheme}://."
                )
        tls = redis_tls_options(tls_ca_file) if tls_ca_file else {}
        hosts = [{"address": url, **tls, **redis_timeouts(connect_timeout, socket_timeout)} for url in redis_urls]
    else:
        # A single process only: fine for runserver and the tests, never for
        # more than one daphne process. ChatConfig.ready() logs it.
        return {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    if layer == "pubsub":
        return {
            "BACKEND": "chat.layers.LeanRedisPubSubChannelLayer",
            "CONFIG": {"hosts": hosts},
        }
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py caps a pool at 100 connections unless told otherwise;
            # more joins in flight than that would fail handshakes.
            "hosts": [{**host, "max_connections": 1000} for host in hosts],
            "capacity": env_int("CHAT_CHANNEL_CAPACITY", 1000),
            "expiry": 30,
        },
    }


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string "
            "(the deployment generates one), or set DJANGO_DEBUG=true on a development machine."
        )
    SECRET_KEY = "django-insecure-development-only"
# Earlier keys, still accepted for what they signed (sessions, password reset
# links) while a rotation settles: comma-separated, newest first.
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")
if not ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is empty. Set it to the names the site is reached by, "
        "comma-separated (for example chat.example.org,127.0.0.1)."
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Behind nginx with TLS: trust the X-Forwarded-Proto header that nginx sets,
# so request.is_secure() is right, and keep cookies to HTTPS.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_HTTPS", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    # First, so that runserver is daphne's ASGI server.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
    "accounts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.chat_site",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_SQLITE_PATH") or BASE_DIR / "db.sqlite3",
            "OPTIONS": {
                # Several daphne processes write to one file: WAL lets readers
                # go on during a write, and IMMEDIATE plus a timeout makes
                # writers queue instead of failing with "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # One connection per thread, kept: opening a SQLite connection
            # (the file, then the PRAGMAs above) cost a websocket join more
            # than its queries did (py-spy under bench churn).
            "CONN_MAX_AGE": None,
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# How long any connection to Redis (the channel layer's, the rate limiter's,
# presence's, a Sentinel's) may take to open, and a command's reply to come,
# in seconds. A Redis that stops answering with its connections open (a power
# cut, a partition) costs each caller this long, after which a broadcast is
# reported failed, a join refused, the rate limit counted per connection.
# A connection opens on a LAN in well under a millisecond: a host that has not
# answered within a second is down or cut off (what Sentinel lookups always
# waited). A healthy Redis answers the chat's commands in a millisecond, and
# its own pauses (a fork for a snapshot, a slow fsync) take tens of
# milliseconds: two seconds is far past them, and short enough that a sender
# hears of an outage at once (redis-py's default is 5 s in 8.x, none before).
CHAT_REDIS_CONNECT_TIMEOUT = env_float("CHAT_REDIS_CONNECT_TIMEOUT", REDIS_CONNECT_TIMEOUT)
CHAT_REDIS_SOCKET_TIMEOUT = env_float("CHAT_REDIS_SOCKET_TIMEOUT", REDIS_SOCKET_TIMEOUT)

CHANNEL_LAYERS = {
    "default": channel_layer_from_env(
        env_list("REDIS_URL"),
        os.environ.get("CHAT_CHANNEL_LAYER", "pubsub"),
        sentinel=sentinel_host(
            env_list("REDIS_SENTINELS"),
            os.environ.get("REDIS_SENTINEL_MASTER", ""),
            os.environ.get("REDIS_PASSWORD", ""),
            tls_ca_file=os.environ.get("REDIS_TLS_CA_FILE", ""),
            connect_timeout=CHAT_REDIS_CONNECT_TIMEOUT,
            socket_timeout=CHAT_REDIS_SOCKET_TIMEOUT,
        )
        if os.environ.get("REDIS_SENTINELS")
        else None,
        tls_ca_file=os.environ.get("REDIS_TLS_CA_FILE", ""),
        connect_timeout=CHAT_REDIS_CONNECT_TIMEOUT,
        socket_timeout=CHAT_REDIS_SOCKET_TIMEOUT,
    ),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# English and Simplified Chinese: the language comes from the browser
# (Accept-Language), or the switcher on every page (a cookie).
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
# The translations are the chat app's (chat/locale), found as any app's are.
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles"
# Hashed names, so nginx can tell browsers to cache them for a year.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "chatsite.staticfiles.ModuleManifestStaticFilesStorage"
        )
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}

# Accounts (Django's auth, at /accounts/): anyone may sign up unless
# CHAT_OPEN_SIGNUP is off (then staff create accounts in the admin).
# CHAT_GUESTS: "post" (people who are not signed in pick a nickname and post,
# marked as guests), "read" (they read, only accounts post) or "off" (sign in
# to enter).
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = LOGOUT_REDIRECT_URL = "/chat/"
CHAT_OPEN_SIGNUP = env_bool("CHAT_OPEN_SIGNUP", True)
CHAT_GUESTS = os.environ.get("CHAT_GUESTS", "post").strip() or "post"
if CHAT_GUESTS not in ("post", "read", "off"):
    raise ImproperlyConfigured(f"CHAT_GUESTS must be post, read or off, not {CHAT_GUESTS!r}.")

# The chat itself.
CHAT_MESSAGE_MAX_LENGTH = env_int("CHAT_MESSAGE_MAX_LENGTH", 2000)
CHAT_HISTORY_LIMIT = env_int("CHAT_HISTORY_LIMIT", 50, minimum=0)
CHAT_RESYNC_LIMIT = env_int("CHAT_RESYNC_LIMIT", 1000)
CHAT_RATE_PER_SECOND = env_float("CHAT_RATE_PER_SECOND", 5.0)
CHAT_RATE_BURST = env_int("CHAT_RATE_BURST", 10)
# Page requests ({"since"}, {"before"}) and moderation requests ({"delete"},
# {"mute"}, {"ban"}) read the database on the process's one database thread:
# each connection has a budget of its own for each (bursts of *_BURST, then
# *_RATE_PER_SECOND). The page's own paging and "load older" clicks stay far
# below it; a client asking in a loop gets page_rate_limited instead of reads.
CHAT_PAGE_RATE_PER_SECOND = env_float("CHAT_PAGE_RATE_PER_SECOND", 2.0)
CHAT_PAGE_BURST = env_int("CHAT_PAGE_BURST", 20)
CHAT_MODERATION_RATE_PER_SECOND = env_float("CHAT_MODERATION_RATE_PER_SECOND", 2.0)
CHAT_MODERATION_BURST = env_int("CHAT_MODERATION_BURST", 20)
# Messages older than this many days are deleted by `manage.py prune_messages`
# (a timer on one app host); unset, empty or 0: kept forever.
CHAT_RETENTION_DAYS = env_int("CHAT_RETENTION_DAYS", 0, minimum=0)
# Bytes a connection may have waiting to be sent before it is closed with 1008
# (a client that does not read; chat-daphne, chat/server.py). The default is
# a full resync page at its largest, so that no client that does read is
# ever cut off by its own resync: CHAT_RESYNC_LIMIT frames of
# CHAT_MESSAGE_MAX_LENGTH characters at up to 4 bytes each in UTF-8 (frames
# are JSON with ensure_ascii off; the controls that would be escaped are
# refused), plus 512 for the rest of the frame. 8.1 MiB with the defaults.
CHAT_SEND_BUFFER_LIMIT = env_int(
    "CHAT_SEND_BUFFER_LIMIT", CHAT_RESYNC_LIMIT * (CHAT_MESSAGE_MAX_LENGTH * 4 + 512), minimum=65536
)
# Websocket handshakes a process works on at once; one more is refused at
# once with HTTP 503 (chat/admission.py), so that a burst of joins cannot
# queue up until none completes in time. 0: no limit.
CHAT_HANDSHAKES_IN_FLIGHT = env_int("CHAT_HANDSHAKES_IN_FLIGHT", 64, minimum=0)

# The proxies (load balancers) whose X-Forwarded-For, -Port and -Proto name
# the client (chat/proxy.py, under every server): IPv4 or IPv6 addresses or
# networks, comma-separated, or * for every peer. Unset or empty: no one, the
# peer is the client. chat-daphne's --proxy-headers and --proxy-trusted set it.
CHAT_PROXY_TRUSTED = os.environ.get("CHAT_PROXY_TRUSTED", "").strip()
if CHAT_PROXY_TRUSTED:
    try:
        parse_networks(CHAT_PROXY_TRUSTED)
    except ValueError as error:
        raise ImproperlyConfigured(f"CHAT_PROXY_TRUSTED: {error}") from None

# Prometheus metrics (chat/metrics.py). Each server process serves its own, on
# CHAT_METRICS_ADDRESS and port CHAT_METRICS_PORT + CHAT_PROCESS_NUM
# (supervisord numbers its processes); no port, no metrics server.
CHAT_METRICS_PORT = env_int("CHAT_METRICS_PORT", 0, minimum=0, maximum=65535)
CHAT_METRICS_ADDRESS = env_listen_address("CHAT_METRICS_ADDRESS", "127.0.0.1")
CHAT_PROCESS_NUM = env_int("CHAT_PROCESS_NUM", 0, minimum=0)
check_metrics_port(CHAT_METRICS_PORT, CHAT_PROCESS_NUM)
