"""The room page's own words: every string of its script translated, every error code it may be sent."""

import gettext
import json
import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from chat import protocol

pytestmark = pytest.mark.django_db

CHAT = Path(protocol.__file__).resolve().parent
# The room page's modules (room.js holds its texts; session.js is meant to hold none, and is read in case).
ROOM_JS = "\n".join((CHAT / "static" / "chat" / name).read_text() for name in ("room.js", "session.js"))
# The literal strings the room page passes to gettext() and ngettext().
SCRIPT_STRINGS = set(re.findall(r'\bn?gettext\(\s*"((?:[^"\\]|\\.)*)"', ROOM_JS))


def test_every_error_code_has_the_pages_own_words():
    refusals = re.search(r"const REFUSALS = \{(.*?)\n\};", ROOM_JS, re.S).group(1)
    assert set(re.findall(r"^\s*(\w+):", refusals, re.M)) == set(protocol.ERROR_CODES)


def test_every_string_of_the_room_script_has_a_chinese_translation():
    with open(CHAT / "locale" / "zh_Hans" / "LC_MESSAGES" / "djangojs.mo", "rb") as compiled:
        catalog = gettext.GNUTranslations(compiled)
    assert len(SCRIPT_STRINGS) > 40
    untranslated = [text for text in SCRIPT_STRINGS if catalog.gettext(json.loads(f'"{text}"')) == json.loads(f'"{text}"')]
    assert untranslated == []


def test_a_chinese_browser_gets_the_script_catalog_in_chinese(client):
    catalog = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert json.dumps("已连接") in catalog  # "connected", the status badge
    assert json.dumps("这个昵称属于一个已注册的账号：请以该账号登录，或另选一个昵称。") in catalog  # name_taken
    english = client.get("/jsi18n/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert json.dumps("已连接") not in english


def test_the_room_page_is_in_chinese_for_a_chinese_browser(client):
    page = client.get("/chat/lobby/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    for text in ("在线：", "输入消息，按回车发送", "发送", "加载更早的消息"):
        assert text in page
    assert "Type a message" not in page


def config_of(page):
    return json.loads(re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', page).group(1))


def test_only_moderators_pages_offer_to_delete_everyones_messages(client):
    people = get_user_model().objects
    client.force_login(people.create_user("plain", password="x"))
    assert config_of(client.get("/chat/lobby/").content.decode())["canModerate"] is False
    moderator = people.create_user("mod", password="x")
    moderator.user_permissions.add(Permission.objects.get(codename="moderate", content_type__app_label="chat"))
    client.force_login(moderator)
    assert config_of(client.get("/chat/lobby/").content.decode())["canModerate"] is True
    client.force_login(people.create_user("staff", password="x", is_staff=True))
    assert config_of(client.get("/chat/lobby/").content.decode())["canModerate"] is True
    client.logout()
    assert config_of(client.get("/chat/lobby/").content.decode())["canModerate"] is False
