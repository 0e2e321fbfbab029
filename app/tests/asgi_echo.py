"""A tiny ASGI app for the proxy tests: it answers with the client and scheme its scope holds."""

import json
import os

from chat.proxy import ProxyHeadersMiddleware


async def application(scope, receive, send):
    seen = json.dumps({"client": scope["client"], "scheme": scope.get("scheme")})
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": seen.encode()})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": seen})
        while (await receive())["type"] != "websocket.disconnect":
            pass


# As chatsite.asgi serves the chat, for servers that do not add the middleware themselves (uvicorn).
behind_proxies = ProxyHeadersMiddleware(application, os.environ.get("CHAT_PROXY_TRUSTED", ""))
