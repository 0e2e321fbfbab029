"""Who may be in a room, checked at the handshake and again whenever access may have been taken away.

Every change that can take someone's access away — a member removed, a room
made private or given another creator, a ban, an account deactivated, made
non-staff or deleted — does two things, wherever it is made (the room's
settings page, the admin, a moderator's {"ban"} frame, the shell):

- it moves the affected rooms' access_version on (a room change: that room;
  a change to a person: every room), in the change's own transaction;
- once that commits, it tells the connections concerned (chat.access: the
  room's group, or ACCESS_GROUP for a person), which check again and close
  with 4403, after a no_access frame saying why, if they may no longer stay.

The notice is tried a few times. Should it still be lost, the version is the
fallback: storing a message and every page a connection reads (a join's
backlog, since, before, a catch-up) read the room's row anyway, every live
message carries the version its store read, and a connection that finds a
version other than the one it last checked at checks again before it writes
or sends anything.
"""

import logging
import time
from dataclasses import dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from . import metrics, protocol
from .models import Restriction, Room

logger = logging.getLogger(__name__)

# The group every connection joins for notices about one person (a ban, an
# account closed): protocol.group_name's groups are "chat." and a hash.
ACCESS_GROUP = "chat.access"
# How often a notice is tried, and the pause after each failure (seconds).
NOTICE_RETRY_PAUSES = (0.1, 0.5)

BANNED, PRIVATE, ACCOUNT = "banned", "private", "account"


@dataclass(frozen=True)
class Refusal:
    """Why someone may not be in a room: reason (a no_access frame's "reason") and a text for people."""

    reason: str
    text: str

    def count_at_handshake(self):
        {BANNED: metrics.refused_for_ban, PRIVATE: metrics.refused_for_private_room,
         ACCOUNT: metrics.refused_for_account}[self.reason].inc()


class Lost(Exception):
    """Raised where a connection finds that its access is gone; the consumer closes it."""

    def __init__(self, refusal):
        super().__init__(refusal.text)
        self.refusal = refusal


def refusal(room_row, user, guest_name, address):
    """Why `user` (or the guest of that nickname and address) may not be in the room of `room_row`; None: may.

    The account is read again: it may have been deactivated, deleted or
    made non-staff since the session was read. A room without a row is public.
    """
    account = None
    if user.is_authenticated:
        account = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
        if account is None:
            return Refusal(ACCOUNT, "Your account was deactivated or deleted.")
    ban = Restriction.applying(account, guest_name if account is None else None, address)
    if ban is not None:
        until = f" until {ban.until:%Y-%m-%d %H:%M} UTC" if ban.until else ""
        return Refusal(BANNED, f"You are banned from this chat{until}.")
    if room_row is not None and not room_row.may_enter(account or AnonymousUser()):
        return Refusal(PRIVATE, "This room is private and you are no longer one of its members.")
    return None


class Access:
    """One connection's access to its room: who it is, and the room's access_version it was last checked at.

    Its methods read the database: call them on the database thread.
    """

    def __init__(self, room, user, address):
        self.room = room  # the room's key
        self.user = user
        self.address = address
        self.guest_name = None  # a guest's nickname, when it has one
        self.version = None  # None: never checked, or the room had no row then

    def check(self, room_row=None, read=True):
        """Checks now (reading the room's row unless given); records the version checked at; the refusal or None."""
        if read:
            room_row = Room.objects.filter(key=self.room).first()
        found = refusal(room_row, self.user, self.guest_name, self.address)
        if found is None:
            self.version = room_row.access_version if room_row is not None else None
        return found

    def still_allowed(self, version, room_row=None):
        """Raises Lost when the room's access version has moved since the last check and access is gone."""
        if version is not None and version == self.version:
            return
        found = self.check(room_row, read=room_row is None)
        if found is not None:
            raise Lost(found)

    def admits(self, room_row):
        """Message.objects.post's `admits`: its locked row says whether anything changed."""
        self.still_allowed(room_row.access_version, room_row)

    def concerned_by(self, event):
        """Whether a notice about one person (an ACCESS_GROUP event) may be about this connection."""
        if self.user.is_authenticated:
            return event.get("account") == self.user.pk
        return (bool(event.get("guest_name")) and event["guest_name"] == self.guest_name) or (
            bool(event.get("address")) and event["address"] == self.address
        )


def taken_away(rooms=None, notice=None, group=None):
    """Moves the access version of `rooms` (keys; None: every room) on, and sends `notice` to `group` once committed."""
    rows = Room.objects.all() if rooms is None else Room.objects.filter(key__in=rooms)
    rows.update(access_version=F("access_version") + 1)
    if notice is not None:
        transaction.on_commit(lambda: send_notice(group, notice))


def send_notice(group, event):
    """Sends an access notice, tried again after a failure; a lost one is caught by the access version."""
    for pause in (*NOTICE_RETRY_PAUSES, None):
        try:
            async_to_sync(get_channel_layer().group_send)(group, event)
            return
        except Exception as error:
            if pause is None:
                logger.error("Could not send the access notice %r to %s (%r); its connections check again "
                             "at their next message, page or catch-up", event, group, error)
                return
            time.sleep(pause)


def room_notice(room_key):
    """taken_away()'s arguments for a change to one room: its connections all check again."""
    return {"rooms": [room_key], "notice": {"type": "chat.access"}, "group": protocol.group_name(room_key)}


def person_notice(**who):
    """taken_away()'s arguments for a change to one person: every room; only that person's connections check."""
    return {"rooms": None, "notice": {"type": "chat.access", **who}, "group": ACCESS_GROUP}


def room_saved(sender, instance, created, update_fields=None, **kwargs):
    # A post saves last_seq alone; a public room (made so, or kept so) takes nobody's access away. A room
    # made private as it gets its row (in the admin) does: until then it was public.
    if not instance.private or (update_fields is not None and set(update_fields) <= {"last_seq"}):
        return
    taken_away(**room_notice(instance.key))


def members_changed(sender, instance, action, reverse, pk_set, **kwargs):
    if action == "pre_clear" and reverse:
        # An account leaving all its rooms at once: which they were is only known before.
        instance._chat_rooms_left = list(instance.private_rooms.values_list("key", flat=True))
    if action not in ("post_remove", "post_clear"):
        return
    if not reverse:
        taken_away(**room_notice(instance.key))
        return
    keys = (list(Room.objects.filter(pk__in=pk_set).values_list("key", flat=True)) if action == "post_remove"
            else getattr(instance, "_chat_rooms_left", []))
    for key in keys:
        taken_away(**room_notice(key))


def restriction_saved(sender, instance, **kwargs):
    if instance.kind != Restriction.BAN:
        return
    if instance.account_id is not None:
        taken_away(**person_notice(account=instance.account_id))
    else:
        taken_away(**person_notice(guest_name=instance.guest_name or None, address=instance.address or None))


def user_saving(sender, instance, update_fields=None, **kwargs):
    # Signing in saves last_login alone: nothing about access, and no query for it.
    if instance.pk is None or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    instance._chat_access_before = sender.objects.filter(pk=instance.pk).values("is_active", "is_staff").first()


def user_saved(sender, instance, created, **kwargs):
    before = getattr(instance, "_chat_access_before", None)
    if created or before is None:
        return
    instance._chat_access_before = None
    if (before["is_active"] and not instance.is_active) or (before["is_staff"] and not instance.is_staff):
        taken_away(**person_notice(account=instance.pk))


def user_deleted(sender, instance, **kwargs):
    taken_away(**person_notice(account=instance.pk))


def connect_signals():
    user_model = get_user_model()
    post_save.connect(room_saved, sender=Room, dispatch_uid="chat.access.room_saved")
    m2m_changed.connect(members_changed, sender=Room.members.through, dispatch_uid="chat.access.members_changed")
    post_save.connect(restriction_saved, sender=Restriction, dispatch_uid="chat.access.restriction_saved")
    pre_save.connect(user_saving, sender=user_model, dispatch_uid="chat.access.user_saving")
    post_save.connect(user_saved, sender=user_model, dispatch_uid="chat.access.user_saved")
    post_delete.connect(user_deleted, sender=user_model, dispatch_uid="chat.access.user_deleted")
