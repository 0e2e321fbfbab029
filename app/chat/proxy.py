"""Which peers may name the client: ASGI middleware on scope["client"], the same under every server.

A proxy in front of the app (nginx, a load balancer) puts the client it saw
in X-Forwarded-For, and the scheme in X-Forwarded-Proto. Believed from
anyone, those headers let whoever reaches the app server's port directly
claim any address, so they are believed only when the connection comes from
a trusted proxy (CHAT_PROXY_TRUSTED). Each proxy appends the peer it saw,
so the client is the rightmost entry that is not itself a trusted proxy (the
leftmost when all are): a client cannot get past the proxies by writing an
address of its own at the front. As uvicorn's ProxyHeadersMiddleware, on
which this is modelled, plus daphne's X-Forwarded-Port, networks written
strictly, and IPv4 peers of a dual-stack socket.

Here rather than in a server's options: chat-daphne, uvicorn and runserver
serve the same application (chatsite.asgi), and daphne itself has no list of
trusted proxies.
"""

import ipaddress

EVERYONE = "*"


def parse_networks(value):
    """Addresses or networks (CIDR), comma-separated, as ipaddress networks; "*" for every peer.

    Strict: 10.0.0.0/24 is a network, 10.0.0.1/24 an error (uvicorn would
    silently never match it). Raises ValueError naming the bad entry.
    """
    if value.strip() == EVERYONE:
        return EVERYONE
    networks = []
    for item in value.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip()))
        except ValueError as error:
            raise ValueError(f"{item.strip()!r} is not an IP address or network ({error})") from None
    return networks


def header(scope, name):
    """The values of a request header (lowercase bytes name), joined as one list would be."""
    values = [value.decode("latin1") for key, value in scope.get("headers", ()) if key == name]
    return ", ".join(values) if values else None


class TrustedProxies:
    """The peers whose X-Forwarded-* headers name the client: networks, or EVERYONE, or none."""

    def __init__(self, networks=()):
        self.everyone = networks == EVERYONE
        self.networks = () if self.everyone else tuple(networks)

    @classmethod
    def from_setting(cls, value):
        """From CHAT_PROXY_TRUSTED's form: a comma-separated string ("" for no one), or a list of its entries."""
        if not isinstance(value, str):
            value = ",".join(value)
        return cls(parse_networks(value) if value.strip() else ())

    def __bool__(self):
        return self.everyone or bool(self.networks)

    def trusts(self, host):
        """Whether a peer's host (an address, or None off TCP) is one of the proxies."""
        if self.everyone:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # None, a UNIX socket's path, or a name a forged header wrote
        if address.version == 6 and address.ipv4_mapped:  # a dual-stack socket's IPv4 peer
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def resolve(self, scope):
        """Puts the client (and scheme) the trusted proxies name into the scope, in place.

        In place, as uvicorn's middleware does: a server that logs the
        scope's client (uvicorn) then logs the client, not the proxy. Applied
        twice, the second finds the client already there and changes
        nothing, or, when every entry was a proxy, finds the same one.
        """
        client = scope.get("client")
        if not client or not self.trusts(client[0]):
            return
        forwarded_for = header(scope, b"x-forwarded-for")
        if forwarded_for:
            hosts = [host.strip() for host in forwarded_for.split(",")]
            host = next((host for host in reversed(hosts) if not self.trusts(host)), hosts[0])
            if host:
                scope["client"] = (host, self.port(scope))
        proto = (header(scope, b"x-forwarded-proto") or "").strip().lower()
        if proto in ("http", "https", "ws", "wss"):
            websocket = scope["type"] == "websocket"
            scope["scheme"] = proto.replace("http", "ws") if websocket else proto.replace("ws", "http")

    @staticmethod
    def port(scope):
        # daphne's: the client's port when a proxy gives it, else 0 (unknown).
        value = header(scope, b"x-forwarded-port")
        try:
            return int(value.split(",")[0]) if value else 0
        except ValueError:
            return 0


class ProxyHeadersMiddleware:
    """ASGI middleware: HTTP requests and websockets from a trusted proxy get the client it names."""

    def __init__(self, application, trusted):
        self.application = application
        self.trusted = trusted if isinstance(trusted, TrustedProxies) else TrustedProxies.from_setting(trusted)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and self.trusted:
            self.trusted.resolve(scope)
        return await self.application(scope, receive, send)
