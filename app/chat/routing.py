from django.urls import re_path

from . import consumers

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room_name>[^/]+)/$", consumers.ChatConsumer.as_asgi()),
    # Anything else is refused at the handshake instead of raising "No route found".
    re_path(r"", consumers.RefuseConsumer.as_asgi()),
]
