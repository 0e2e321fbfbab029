from django.conf import settings


def chat_site(request):
    """What every page's header and forms need to know about who may do what."""
    return {"open_signup": settings.CHAT_OPEN_SIGNUP, "guests": settings.CHAT_GUESTS}
