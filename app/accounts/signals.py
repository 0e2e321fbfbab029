from django.contrib.auth import get_user_model
from django.db.models.signals import post_save
from django.dispatch import receiver

from chat import names

from .models import NameKey


@receiver(post_save, sender=get_user_model())
def keep_name_key(sender, instance, **kwargs):
    NameKey.objects.update_or_create(user=instance, defaults={"key": names.key(instance.get_username())})
