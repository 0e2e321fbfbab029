from django.conf import settings
from django.db import models


class NameKey(models.Model):
    """The key of a registered user's name (chat.names.key): two accounts, or an account and a guest, never share one.

    Django's username is unique only as written: "Admin" and "ａｄｍｉｎ"
    would be two users. This row is kept in step with the user by a signal,
    for users made any way (sign-up, the admin, createsuperuser).
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="name_key")
    key = models.CharField(max_length=150, unique=True)

    def __str__(self):
        return self.key
