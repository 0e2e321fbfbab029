import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)


class ChatConfig(AppConfig):
    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import access

        access.connect_signals()
        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if backend.endswith("InMemoryChannelLayer"):
            logger.warning(
                "REDIS_URL is not set: using the in-memory channel layer, which only "
                "reaches clients of this one process. Set REDIS_URL for a deployment."
            )
