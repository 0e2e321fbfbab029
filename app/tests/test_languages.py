"""The UI in English and Simplified Chinese: from the browser's Accept-Language, or the switcher."""

import pytest

pytestmark = pytest.mark.django_db


def test_a_chinese_browser_gets_the_chinese_pages_with_html_lang(client):
    page = client.get("/chat/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9").content.decode()
    assert '<html lang="zh-hans">' in page
    assert "去哪个房间？" in page and "Which room?" not in page
    login = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert "登录" in login


def test_other_browsers_get_english(client):
    page = client.get("/chat/", HTTP_ACCEPT_LANGUAGE="fr-FR").content.decode()
    assert '<html lang="en">' in page and "Which room?" in page


def test_the_switcher_keeps_the_choice(client):
    answer = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/chat/"})
    assert answer.status_code == 302 and answer["Location"] == "/chat/"
    assert "去哪个房间？" in client.get("/chat/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    client.post("/i18n/setlang/", {"language": "en", "next": "/chat/"})
    assert "Which room?" in client.get("/chat/").content.decode()


def test_form_errors_are_translated_too(client):
    answer = client.post(
        "/accounts/signup/",
        {"username": "an\u200bn", "password1": "a long enough password", "password2": "a long enough password"},
        HTTP_ACCEPT_LANGUAGE="zh-CN",
    )
    assert "名字不能包含不可见字符" in answer.content.decode()
