"""Names people see (user names, guests' nicknames): normalized, and safe to show.

A name is NFKC-normalized, so that a full-width "ａｄｍｉｎ" and "admin" are
written the same, its runs of spaces are one space, and it may not hold a
character that is invisible or changes how text around it is shown: controls
(NUL included), format characters (zero-width spaces and joiners, bidi
overrides like U+202E), surrogates, private-use and unassigned code points.
Two names are the same name when their keys are equal: NFKC and case-folded,
so "Admin", "ADMIN" and "ａｄｍｉｎ" are one name.
"""

import re
import unicodedata

from django.utils.translation import gettext as _

MAX_LENGTH = 32
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
SPACES = re.compile(r"\s+")


# Names no account may take: what a message without a name is shown as.
RESERVED = frozenset({"anonymous"})


class InvalidName(ValueError):
    """A name the chat refuses; str(error) says why, for people."""


def normalize(name):
    """The name as the chat stores and shows it; raises InvalidName."""
    for character in name:
        if unicodedata.category(character) in REFUSED_CATEGORIES and character not in " \t":
            raise InvalidName(
                _("A name may not hold invisible or control characters (U+%(code)s is one).")
                % {"code": f"{ord(character):04X}"}
            )
    name = SPACES.sub(" ", unicodedata.normalize("NFKC", name)).strip()
    if not name:
        raise InvalidName(_("A name needs at least one visible character."))
    if len(name) > MAX_LENGTH:
        raise InvalidName(_("A name is at most %(count)d characters.") % {"count": MAX_LENGTH})
    return name


def key(name):
    """What two names must share to be the same name: NFKC, case-folded, NFKC again (folding can denormalize)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
