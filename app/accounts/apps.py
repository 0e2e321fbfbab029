from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Accounts: sign up, sign in and out, change password, on Django's auth; one name per person."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self):
        from . import signals  # noqa: F401
