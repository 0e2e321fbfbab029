"""The pages and /healthz, through Django's test client."""

import json

import pytest

from .conftest import LAYERS, free_port

pytestmark = pytest.mark.django_db


def test_index_page_has_the_room_picker(client):
    response = client.get("/chat/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="room-name-input"' in page
    assert "/static/chat/index.js" in page


def test_room_page_has_log_nickname_status_and_its_script(client):
    response = client.get("/chat/lobby/")
    assert response.status_code == 200
    page = response.content.decode()
    for element in ('id="chat-log"', 'id="chat-user-input"', 'id="chat-message-input"', 'id="status"'):
        assert element in page
    assert "/static/chat/room.js" in page
    assert "<script>" not in page, "no inline script: the JavaScript lives in a static file"


def test_room_name_reaches_the_page_through_json_script(client):
    response = client.get("/chat/%E5%A4%A7%E5%8E%85/")
    assert response.status_code == 200
    page = response.content.decode()
    start = page.index('<script id="chat-config" type="application/json">') + len(
        '<script id="chat-config" type="application/json">'
    )
    config = json.loads(page[start : page.index("</script>", start)])
    assert config["room"] == "大厅"
    assert config["maxLength"] == 2000


@pytest.mark.parametrize("path", ["/chat/a%20b/", "/chat/%3C%2Fscript%3E%3Cscript%3Ealert(1)/", f"/chat/{'x' * 65}/"])
def test_invalid_room_names_are_not_found(client, path):
    assert client.get(path).status_code == 404


def test_static_files_are_under_static(client, settings):
    from django.contrib.staticfiles import finders

    assert finders.find("chat/room.js")
    assert settings.STATIC_URL == "/static/"


def test_collectstatic_writes_the_hashed_session_module_into_the_room_script(settings, tmp_path):
    # nginx serves /static/ as immutable for a year: room.js must import session.js by its hashed name, or a
    # browser would keep the first session.js it got across deploys. The storage a deployment uses (DEBUG
    # off), not the tests' plain one.
    from django.core.management import call_command

    from chatsite import settings as deployed

    settings.STORAGES = deployed.STORAGES
    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", "--noinput", verbosity=0)
    paths = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    room = (tmp_path / paths["chat/room.js"]).read_text()
    hashed = paths["chat/session.js"].rsplit("/", 1)[1]
    assert hashed != "session.js"
    assert f'import {{ ChatSession }} from "./{hashed}";' in room


@pytest.mark.parametrize("layer", ["memory", "redis-pubsub", "redis-core"])
def test_healthz_is_200_when_database_and_channel_layer_answer(client, settings, request, layer):
    url = request.getfixturevalue("redis_url") if layer != "memory" else None
    settings.CHANNEL_LAYERS = {"default": LAYERS[layer](url)}
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


@pytest.mark.parametrize("layer", ["redis-pubsub", "redis-core"])
def test_healthz_is_503_naming_the_channel_layer_when_redis_is_down(client, settings, layer):
    settings.CHANNEL_LAYERS = {"default": LAYERS[layer](f"redis://127.0.0.1:{free_port()}/0")}
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["failing"] == ["channel_layer"]
    assert body["database"] == "ok"
