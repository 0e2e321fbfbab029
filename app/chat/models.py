from django.db import models
from django.utils import timezone


class Message(models.Model):
    """One chat message. Its primary key is the `id` clients see and resync from."""

    room = models.CharField(max_length=64)
    user = models.CharField(max_length=32)
    text = models.TextField()
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["room", "id"], name="chat_message_room_id")]
        ordering = ["id"]

    def __str__(self):
        return f"{self.room} #{self.pk} {self.user}: {self.text[:40]}"
