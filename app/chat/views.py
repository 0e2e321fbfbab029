import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import NameKey

from . import names, protocol
from .models import Room, is_moderator

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
    # /chat/Lobby/ and /chat/lobby/ are one room, shown as its own spelling.
    room_row = Room.objects.filter(key=protocol.room_key(room_name)).first()
    if room_row is not None and not room_row.may_enter(request.user):
        raise Http404("No such room.")  # a private room does not exist for those outside it
    room_name = room_row.name if room_row is not None else protocol.room_shown_name(room_name)
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
                # Moderators (staff, chat.moderate) get a delete button on every message, not only their own.
                "canModerate": is_moderator(request.user),
            },
            "may_manage": signed_in and (room_row is None or room_row.may_manage(request.user)),
        },
    )


class RoomSettingsForm(forms.Form):
    private = forms.BooleanField(
        required=False, help_text=gettext_lazy("Only the members below, you and staff may enter.")
    )
    members = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text=gettext_lazy("Account names, one per line."),
    )

    def clean_members(self):
        wanted = [line.strip() for line in self.cleaned_data["members"].splitlines() if line.strip()]
        keys = {names.key(name): name for name in wanted}
        found = dict(NameKey.objects.filter(key__in=keys).values_list("key", "user_id"))
        unknown = [name for key, name in keys.items() if key not in found]
        if unknown:
            raise forms.ValidationError(_("No account called %(names)s.") % {"names": ", ".join(unknown)})
        return list(found.values())


def room_settings(request, room_name):
    """Make a room private and say who its members are: its creator and staff only."""
    if not protocol.is_valid_room_name(room_name):
        raise Http404("A room name is 1 to 64 letters, digits, '_' or '-'.")
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    # Whoever opens an unclaimed room's settings first is its creator.
    room_row, _ = Room.objects.get_or_create(**Room.named(room_name, created_by=request.user))
    if not room_row.may_manage(request.user):
        if not room_row.may_enter(request.user):
            raise Http404("No such room.")
        raise PermissionDenied("Only the room's creator and staff may change its settings.")
    initial = {
        "private": room_row.private,
        "members": "\n".join(room_row.members.order_by("username").values_list("username", flat=True)),
    }
    form = RoomSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        # Open connections of people who may no longer enter are closed (4403), once this commits (chat.access).
        with transaction.atomic():
            room_row.private = form.cleaned_data["private"]
            room_row.save(update_fields=["private"])
            room_row.members.set(get_user_model().objects.filter(pk__in=form.cleaned_data["members"]))
        return redirect("chat:room", room_name=room_row.name)
    return render(request, "chat/room_settings.html", {"room_name": room_row.name, "form": form, "room": room_row})


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
