from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone

from . import protocol


def is_moderator(user):
    """Staff, and users given the chat.moderate permission, delete any message, mute and ban."""
    return user.is_authenticated and (user.is_staff or user.has_perm("chat.moderate"))


class Room(models.Model):
    """A room that has had a message: its row is what posting a message locks.

    Holding this row's lock from before a message takes its id until its
    transaction commits makes one room's messages commit in id order, however
    many processes write. Without it a database that hands out ids before
    commit (PostgreSQL's sequences) can commit 41 after 42, and a client that
    saw 42 and resyncs with ?since=42 never gets 41.

    Names that differ only by case or width are one room: its key
    (protocol.room_key) is what its messages, mutes and channel-layer group
    go by, and its name is the spelling it was first used with, which its
    page and its messages' "room" show.
    """

    name = models.CharField(max_length=64, unique=True, help_text="As shown; only its case or width may change.")
    key = models.CharField(max_length=64, unique=True, editable=False)
    last_seq = models.PositiveBigIntegerField(default=0)
    # The account that posted first, or opened the room's settings first: it
    # may make the room private and say who its members are (so may staff).
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    private = models.BooleanField(
        default=False, help_text="Only its members, its creator and staff see it: to anyone else it does not exist."
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="private_rooms")
    # Moves on with every change that may take someone's access away (chat.access): a connection
    # checks again who may enter when it sees a number other than the one it last checked at.
    # A default in the database too: app servers of the release before, during a rolling deploy,
    # create rooms without it.
    access_version = models.PositiveBigIntegerField(default=0, db_default=0, editable=False)

    def __str__(self):
        return self.name

    def clean(self):
        if not protocol.is_valid_room_name(self.name):
            raise ValidationError({"name": "A room name is 1 to 64 letters, digits, '_' or '-'."})
        key = protocol.room_key(self.name)
        if self.key and key != self.key:
            raise ValidationError({"name": "A room's name may change only in case or width, or it is another room."})
        if Room.objects.filter(key=key).exclude(pk=self.pk).exists():
            raise ValidationError({"name": "That room exists already (names differing only in case or width are one)."})

    def save(self, *args, **kwargs):
        if not self.key:
            self.key = protocol.room_key(self.name)
        super().save(*args, **kwargs)

    def may_manage(self, user):
        return user.is_authenticated and (user.is_staff or (self.created_by_id is not None and user.pk == self.created_by_id))

    def may_enter(self, user):
        if not self.private:
            return True
        return self.may_manage(user) or (user.is_authenticated and self.members.filter(pk=user.pk).exists())

    @classmethod
    def may_user_enter(cls, key, user):
        """Whether `user` may see the room of key `key` (a room without a row is public)."""
        room = cls.objects.filter(key=key).first()
        return room is None or room.may_enter(user)

    @staticmethod
    def named(name, **defaults):
        """get_or_create()'s arguments for the room `name` names in any case or width; a new one is shown as written."""
        return {"key": protocol.room_key(name), "defaults": {"name": protocol.room_shown_name(name), **defaults}}


class MessageManager(models.Manager):
    def post(self, room, user, text, client_id=None, author=None, guest=False, admits=None):
        """Stores a message in room `room` (a room name, in any case or width) in its order; returns (message, created).

        With a client_id, a message the same sender already posted with it is
        returned instead of stored again (created is False): a client may
        resend until it sees its ack. The message's room_name is the room's
        shown name (Room.name), for its frame, and its access_version the
        room's, read under the lock, for its broadcast. `admits`, when given, is called
        with the room's locked row before anything is written, and refuses
        the message by raising.
        """
        with transaction.atomic():
            room_row, _ = Room.objects.select_for_update().get_or_create(**Room.named(room, created_by=author))
            if admits is not None:
                admits(room_row)
            key = room_row.key
            if client_id is not None:
                earlier = self.filter(room=key, user=user, client_id=client_id).first()
                if earlier is not None:
                    earlier.room_name, earlier.access_version = room_row.name, room_row.access_version
                    return earlier, False
            room_row.last_seq += 1
            room_row.save(update_fields=["last_seq"])
            message = self.create(
                room=key,
                seq=room_row.last_seq,
                user=user,
                text=text,
                client_id=client_id,
                author=author,
                guest=guest,
            )
        message.room_name, message.access_version = room_row.name, room_row.access_version
        return message, True


class Message(models.Model):
    """One chat message. Its primary key is the `id` clients see and resync from."""

    # The room's key (Room.key): "Lobby" and "lobby" post to one room.
    room = models.CharField(max_length=64)
    # The message's number in its room: 1, 2, 3, ... with no gaps, so that a
    # server relaying a room sees at once when a message has not reached it.
    # Null on messages stored before the column existed.
    seq = models.PositiveBigIntegerField(null=True, blank=True)
    user = models.CharField(max_length=32)
    # The account that posted it; None for a guest's message (and for messages
    # from before accounts existed, which were all guests').
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    guest = models.BooleanField(default=False)
    text = models.TextField()
    created = models.DateTimeField(default=timezone.now)
    # The sender's own id for the message, which makes resending it harmless.
    client_id = models.CharField(max_length=64, null=True, blank=True)
    # When its author or a moderator deleted it: it is then in no history and no resync.
    deleted = models.DateTimeField(null=True, blank=True)

    objects = MessageManager()

    class Meta:
        indexes = [models.Index(fields=["room", "id"], name="chat_message_room_id")]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="chat_message_room_seq"),
            models.UniqueConstraint(
                fields=["room", "user", "client_id"],
                condition=models.Q(client_id__isnull=False),
                name="chat_message_client_id",
            ),
        ]
        ordering = ["id"]
        permissions = [("moderate", "Can delete any message, and mute and ban people")]

    def __str__(self):
        return f"{self.room} #{self.pk} {self.user}: {self.text[:40]}"

    def delete_for_everyone(self, actor, own=False):
        """Takes the message out of every later history and resync, and logs who did it."""
        self.deleted = timezone.now()
        self.save(update_fields=["deleted"])
        ModerationLog.objects.create(
            actor=actor,
            action="delete own message" if own else "delete message",
            room=self.room,
            target=f"#{self.id} by {self.user}",
            detail=self.text[:500],
        )


class Restriction(models.Model):
    """A mute (in one room, or every room) or a ban (from the site), for a time or for good.

    It names an account, or a guest by nickname and, for a ban, by address:
    a guest can pick another nickname, not another address.
    """

    MUTE, BAN = "mute", "ban"
    kind = models.CharField(max_length=4, choices=[(MUTE, "mute: may read, may not post"), (BAN, "ban: may not enter")])
    account = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="restrictions"
    )
    guest_name = models.CharField(max_length=32, blank=True, help_text="A guest's nickname (for guests only).")
    address = models.GenericIPAddressField(null=True, blank=True, help_text="A guest's IP address (bans).")
    room = models.CharField(
        max_length=64, blank=True, help_text="Mutes only; empty: every room. Any case or width: Lobby is lobby."
    )
    until = models.DateTimeField(null=True, blank=True, help_text="Empty: until lifted.")
    reason = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(account__isnull=False) | ~models.Q(guest_name="") | models.Q(address__isnull=False),
                name="chat_restriction_names_someone",
            )
        ]

    def __str__(self):
        who = self.account or self.guest_name or self.address
        return f"{self.kind} {who}" + (f" in {self.room}" if self.room else "")

    def save(self, *args, **kwargs):
        # A mute in "Lobby" is a mute in the room "lobby": kept as the room's key, which applying() compares.
        if self.room:
            self.room = protocol.room_key(self.room)
        super().save(*args, **kwargs)

    @classmethod
    def impose(cls, actor, kind, account=None, guest_name="", room="", minutes=None, reason=""):
        """A mute (in `room`) or a ban, by moderator `actor`, for `minutes` or until lifted; logged."""
        until = timezone.now() + timedelta(minutes=minutes) if minutes else None
        restriction = cls.objects.create(
            kind=kind, account=account, guest_name=guest_name if account is None else "",
            room=room if kind == cls.MUTE else "", until=until, reason=reason, created_by=actor,
        )
        ModerationLog.record(actor, f"add {kind}", restriction)
        return restriction

    @classmethod
    def applying(cls, account=None, guest_name=None, address=None, room=None):
        """The restriction that stops this person now: a ban, or (in room key `room`) a mute; None when there is none.

        One query, since it runs for every message posted.
        """
        if account is not None:
            who = models.Q(account=account)
        else:
            who = models.Q(pk__in=[])
            if guest_name:
                who |= models.Q(account__isnull=True, guest_name=guest_name)
            if address:
                who |= models.Q(account__isnull=True, address=address)
        kinds = models.Q(kind=cls.BAN)
        if room is not None:
            kinds |= models.Q(kind=cls.MUTE, room__in=["", room])
        now_on = models.Q(until__isnull=True) | models.Q(until__gt=timezone.now())
        return cls.objects.filter(who, kinds, now_on).order_by("kind").first()  # "ban" before "mute"


class ModerationLog(models.Model):
    """What a moderator (or an author, deleting their own message) did, and when."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=32)
    room = models.CharField(max_length=64, blank=True)
    target = models.CharField(max_length=100, blank=True)
    detail = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    @classmethod
    def record(cls, actor, action, restriction):
        """Logs a mute or ban made, changed or lifted (in the admin or from the chat) by `actor`."""
        until = f"until {restriction.until:%Y-%m-%d %H:%M} UTC" if restriction.until else "until lifted"
        return cls.objects.create(
            actor=actor,
            action=action,
            room=restriction.room,
            target=str(restriction.account or restriction.guest_name or restriction.address),
            detail=f"{until}. {restriction.reason}".strip(),
        )

    def __str__(self):
        return f"{self.created:%Y-%m-%d %H:%M} {self.actor}: {self.action} {self.target}"
