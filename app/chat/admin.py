from django.contrib import admin

from .models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "user", "created", "text"]
    list_filter = ["room"]
    search_fields = ["text", "user", "room"]
    ordering = ["-id"]
