from django.contrib import admin
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog

from chat import views

urlpatterns = [
    path("chat/", include("chat.urls")),
    path("accounts/", include("accounts.urls")),
    # The language switcher's POST target, and the page scripts' translations.
    path("i18n/", include("django.conf.urls.i18n")),
    path("jsi18n/", JavaScriptCatalog.as_view(packages=["chat"]), name="javascript-catalog"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
