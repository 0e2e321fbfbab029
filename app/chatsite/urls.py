from django.contrib import admin
from django.urls import include, path

from chat import views

urlpatterns = [
    path("chat/", include("chat.urls")),
    path("accounts/", include("accounts.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
