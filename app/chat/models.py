from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


class Room(models.Model):
    """A room that has had a message: its row is what posting a message locks.

    Holding this row's lock from before a message takes its id until its
    transaction commits makes one room's messages commit in id order, however
    many processes write. Without it a database that hands out ids before
    commit (PostgreSQL's sequences) can commit 41 after 42, and a client that
    saw 42 and resyncs with ?since=42 never gets 41.
    """

    name = models.CharField(max_length=64, unique=True)
    last_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self):
        return self.name


class MessageManager(models.Manager):
    def post(self, room, user, text, client_id=None, author=None, guest=False):
        """Stores a message in its room's order; returns (message, created).

        With a client_id, a message the same sender already posted with it is
        returned instead of stored again (created is False): a client may
        resend until it sees its ack.
        """
        with transaction.atomic():
            room_row, _ = Room.objects.select_for_update().get_or_create(name=room)
            if client_id is not None:
                earlier = self.filter(room=room, user=user, client_id=client_id).first()
                if earlier is not None:
                    return earlier, False
            room_row.last_seq += 1
            room_row.save(update_fields=["last_seq"])
            message = self.create(
                room=room,
                seq=room_row.last_seq,
                user=user,
                text=text,
                client_id=client_id,
                author=author,
                guest=guest,
            )
        return message, True


class Message(models.Model):
    """One chat message. Its primary key is the `id` clients see and resync from."""

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

    def __str__(self):
        return f"{self.room} #{self.pk} {self.user}: {self.text[:40]}"
