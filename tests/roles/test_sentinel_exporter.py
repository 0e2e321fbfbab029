"""The Sentinel exporter as the exporters role configures it on a Sentinel host of a TLS site.

Sentinel speaks TLS only there, on its own port, and asks its clients for
the site's Redis password (the redis role's requirepass): the exporter must
connect with rediss:// to Sentinel's port on loopback (the host's
certificate names 127.0.0.1), verify it against the site's CA, give that
password in the environment, and listen on the host's private address.
"""

import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import run_play  # noqa: E402 (tests/rendering.py)

PLAY = """\
- name: Render the Sentinel exporter's settings
  hosts: sentinel
  connection: local
  gather_facts: false
  tasks:
    - name: Render them
      ansible.builtin.template:
        src: "{root}/ansible/roles/exporters/templates/etc/default/prometheus-redis-sentinel-exporter.j2"
        dest: "{out}/{{ inventory_hostname }}"
        mode: "0600"
"""


def test_the_sentinel_exporter_reaches_sentinel_over_tls_with_its_password(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_play(tmp_path / "run", PLAY.replace("{out}", str(out)),
             ["ansible/vars/site.yml", "ansible/roles/exporters/defaults/main.yml", "ansible/roles/exporters/vars/main.yml"],
             {"all": {"children": {
                 "redis": {"hosts": {"redis1": {"ansible_host": "10.0.0.21"}}},
                 "db": {"hosts": {"db1": {"ansible_host": "10.0.0.31"}}},
                 "sentinel": {"hosts": {"redis1": None, "db1": None}},
                 "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}},
             {"redis_sentinel": True, "vault_chat_redis_password": "r" * 40,
              "vault_chat_redis_exporter_password": "e" * 40})
    settings = dict(line.split("=", 1) for line in (out / "db1").read_text().splitlines() if "=" in line and line[0] != "#")
    assert shlex.split(settings["REDIS_PASSWORD"]) == ["r" * 40]
    assert "REDIS_USER" not in settings
    # The quoted ARGS, as systemd splits $ARGS into the program's arguments.
    (args,) = shlex.split(settings["ARGS"])
    assert sorted(args.split()) == sorted([
        "-redis.addr=rediss://127.0.0.1:26379", "-tls-ca-cert-file=/etc/ssl/chat/ca.crt",
        "-web.listen-address=10.0.0.31:9122"])
