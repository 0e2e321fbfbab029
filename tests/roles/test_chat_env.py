"""The app's environment file as the chat_app role writes it: a rotation's earlier secret keys reach the app."""

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import run_play  # noqa: E402 (tests/rendering.py)

PLAY = """\
- name: Render chat.env
  hosts: app
  connection: local
  gather_facts: false
  tasks:
    - name: Render it
      ansible.builtin.template:
        src: "{root}/ansible/roles/chat_app/templates/etc/chat/chat.env.j2"
        dest: "{out}/chat.env"
        mode: "0600"
"""


def chat_env(tmp_path, **settings):
    out = tmp_path / "out"
    out.mkdir()
    run_play(tmp_path / "run", PLAY.replace("{out}", str(out)),
             ["ansible/vars/site.yml", "ansible/roles/chat_app/defaults/main.yml"],
             {"all": {"children": {"app": {"hosts": {"app1": {"ansible_host": "10.0.0.11"}}}}}},
             {"vault_chat_secret_key": "n" * 50, **settings})
    return dict(line.split("=", 1) for line in (out / "chat.env").read_text().splitlines() if "=" in line and line[0] != "#")


@pytest.mark.parametrize("fallbacks", [["o" * 50], ["o" * 50, "p" * 40]])
def test_earlier_keys_go_to_django_secret_key_fallbacks(tmp_path, fallbacks):
    env = chat_env(tmp_path, chat_app_secret_key_fallbacks=fallbacks)
    assert shlex.split(env["DJANGO_SECRET_KEY"]) == ["n" * 50]
    assert shlex.split(env["DJANGO_SECRET_KEY_FALLBACKS"]) == [",".join(fallbacks)]


def test_without_earlier_keys_the_file_has_no_fallbacks(tmp_path):
    assert "DJANGO_SECRET_KEY_FALLBACKS" not in chat_env(tmp_path)
