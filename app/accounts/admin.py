from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .forms import AdminSignupForm, AdminUserForm

User = get_user_model()


# Django's user admin, with names checked as sign-up checks them: staff
# cannot make "Admin" beside "admin" either.
admin.site.unregister(User)


@admin.register(User)
class ChatUserAdmin(UserAdmin):
    add_form = AdminSignupForm
    form = AdminUserForm
