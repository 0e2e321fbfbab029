from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm, UserCreationForm
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from chat import names

from .models import NameKey


def clean_account_name(value, user=None):
    """A user name as the chat stores it (for `user`, when renaming one), or a ValidationError people can read."""
    try:
        name = names.normalize(value)
    except names.InvalidName as error:
        raise forms.ValidationError(str(error)) from None
    if names.key(name) in names.RESERVED:
        raise forms.ValidationError(_("“%(name)s” is reserved: pick another name.") % {"name": name})
    others = NameKey.objects.filter(key=names.key(name))
    if user is not None and user.pk is not None:
        others = others.exclude(user=user)
    if others.exists():
        raise forms.ValidationError(_("That name is taken (names that differ only in case or width are the same)."))
    return name


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)
        # names.MAX_LENGTH, written out: a lazy translation cannot be formatted at import.
        help_texts = {"username": gettext_lazy("Up to 32 characters; shown beside your messages.")}

    def clean_username(self):
        return clean_account_name(self.cleaned_data["username"])


class AdminSignupForm(AdminUserCreationForm):
    """The admin's "add user" form, with the same rule for names as sign-up."""

    def clean_username(self):
        return clean_account_name(self.cleaned_data["username"])


class AdminUserForm(UserChangeForm):
    def clean_username(self):
        return clean_account_name(self.cleaned_data["username"], self.instance)
