import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin

from . import protocol
from .models import Message, ModerationLog, Restriction, Room, is_moderator

logger = logging.getLogger(__name__)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "user", "guest", "created", "deleted", "text"]
    list_filter = ["room", "guest", ("deleted", admin.EmptyFieldListFilter)]
    search_fields = ["text", "user", "room"]
    ordering = ["-id"]
    actions = ["delete_for_everyone"]

    @admin.action(description="Delete for everyone (from open pages, history and resync)", permissions=["moderate"])
    def delete_for_everyone(self, request, queryset):
        deleted = 0
        for message in queryset.filter(deleted=None):
            message.delete_for_everyone(request.user)
            try:
                async_to_sync(get_channel_layer().group_send)(
                    protocol.group_name(message.room), {"type": "chat.deleted", "id": message.id}
                )
            except Exception:
                logger.exception("Could not broadcast the deletion of message %s", message.id)
            deleted += 1
        self.message_user(request, f"Deleted {deleted} message(s).")

    def has_moderate_permission(self, request):
        return is_moderator(request.user)


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "key", "private", "created_by", "last_seq"]
    list_filter = ["private"]
    search_fields = ["name", "key"]
    filter_horizontal = ["members"]
    autocomplete_fields = ["created_by"]
    # last_seq numbers the room's messages: edited by hand, it would break the numbering clients rely on.
    readonly_fields = ["key", "last_seq"]


@admin.register(Restriction)
class RestrictionAdmin(admin.ModelAdmin):
    """Mutes and bans; each one made, changed or lifted here is logged in the moderation log."""

    list_display = ["kind", "account", "guest_name", "address", "room", "until", "created_by", "created", "reason"]
    list_filter = ["kind"]
    search_fields = ["account__username", "guest_name", "address", "room", "reason"]
    autocomplete_fields = ["account"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        ModerationLog.record(request.user, f"{'change' if change else 'add'} {obj.kind}", obj)

    def delete_model(self, request, obj):
        ModerationLog.record(request.user, f"lift {obj.kind}", obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            ModerationLog.record(request.user, f"lift {obj.kind}", obj)
        super().delete_queryset(request, queryset)


@admin.register(ModerationLog)
class ModerationLogAdmin(admin.ModelAdmin):
    """Read-only: what moderators did, and when."""

    list_display = ["created", "actor", "action", "room", "target", "detail"]
    list_filter = ["action"]
    search_fields = ["actor__username", "room", "target", "detail"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
