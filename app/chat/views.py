import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, JsonResponse
from django.shortcuts import render

from . import protocol

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT = 3  # seconds per check; a load balancer's probe gives up soon after


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    if not protocol.is_valid_room_name(room_name):
        raise Http404("A room name is 1 to 64 letters, digits, '_' or '-'.")
    signed_in = request.user.is_authenticated
    if not signed_in and settings.CHAT_GUESTS == "off":
        return redirect_to_login(request.get_full_path())
    nickname = ""
    if signed_in:
        nickname = request.user.get_username()
    elif settings.CHAT_GUESTS == "post":
        # The websocket keeps a guest's nickname in the session: make sure
        # there is one for it to keep it in.
        if not request.session.session_key:
            request.session.save()
        nickname = request.session.get("chat_guest_name", "")
    return render(
        request,
        "chat/room.html",
        {
            "room_name": room_name,
            "chat_config": {
                "room": room_name,
                "maxLength": settings.CHAT_MESSAGE_MAX_LENGTH,
                "userMaxLength": protocol.USER_MAX_LENGTH,
                # Who the page speaks for: an account's name is fixed; a
                # guest's nickname is what the server holds for it.
                "nickname": nickname,
                "signedIn": signed_in,
                "canPost": signed_in or settings.CHAT_GUESTS == "post",
            },
        },
    )


@database_sync_to_async
def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_channel_layer():
    # A group send reaches the layer's backend (Redis) and leaves nothing
    # behind: no subscription, no key, since the group has no members.
    await get_channel_layer().group_send("healthz", {"type": "health.check"})


async def healthz(request):
    """200 when the database and the channel layer answer; 503 naming what failed."""
    results = {}
    for name, check in (("database", check_database), ("channel_layer", check_channel_layer)):
        try:
            await asyncio.wait_for(check(), HEALTH_TIMEOUT)
            results[name] = "ok"
        except Exception as error:  # any failure is an unhealthy answer, not a 500
            logger.warning("Health check of the %s failed: %r", name, error)
            results[name] = f"error: {type(error).__name__}"
    failing = [name for name, result in results.items() if result != "ok"]
    body = {"status": "error" if failing else "ok", **results}
    if failing:
        body["failing"] = failing
    return JsonResponse(body, status=503 if failing else 200)
