from django.contrib import admin

from .models import Message, Room


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "user", "created", "text"]
    list_filter = ["room"]
    search_fields = ["text", "user", "room"]
    ordering = ["-id"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "last_seq"]
    search_fields = ["name"]
    # last_seq numbers the room's messages: edited by hand, it would break the numbering clients rely on.
    readonly_fields = ["last_seq"]
