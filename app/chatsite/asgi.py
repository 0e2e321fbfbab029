"""The ASGI application that daphne serves: HTTP through Django, websockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set Django up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat import metrics  # noqa: E402
from chat.admission import HandshakeLimiter  # noqa: E402
from chat.proxy import ProxyHeadersMiddleware  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402


class CountingOriginValidator(OriginValidator):
    """Channels' origin check, counting the handshakes it refuses in chat_handshakes_refused_total."""

    def valid_origin(self, parsed_origin):
        valid = super().valid_origin(parsed_origin)
        if not valid:
            metrics.refused_for_origin.inc()
        return valid


def allowed_hosts_origin_validator(application):
    """AllowedHostsOriginValidator (same hosts: ALLOWED_HOSTS, or local ones under DEBUG), counted."""
    return CountingOriginValidator(application, AllowedHostsOriginValidator(application).allowed_origins)


# First, the client a trusted proxy names (CHAT_PROXY_TRUSTED), for HTTP and
# websockets alike, whichever server runs this.
application = ProxyHeadersMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # Refuses a handshake past CHAT_HANDSHAKES_IN_FLIGHT in progress (503),
            # then one whose Origin is missing or not in ALLOWED_HOSTS.
            "websocket": HandshakeLimiter(
                allowed_hosts_origin_validator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
            ),
        }
    ),
    settings.CHAT_PROXY_TRUSTED,
)

# Here rather than in ChatConfig.ready(): the servers (chat-daphne, uvicorn,
# runserver) import this module, while management commands (migrate,
# collectstatic), which set Django up too, must not take the port.
metrics.start_exposition_server()

# Everything loaded so far (Django, Channels, the server) lives as long as the
# process. Moving it out of the collector's reach keeps its full collections
# short: under a broadcast load they were the latency spikes (max 400+ ms
# before, about 130 ms after, in the benchmark).
gc.freeze()
