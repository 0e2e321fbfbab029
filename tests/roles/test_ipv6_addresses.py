"""A site whose hosts talk over IPv6: every address that goes before a port is in brackets.

Rendered from the inventory as a run would (tests/rendering.py): the app's
REDIS_URL, REDIS_SENTINELS and DATABASE_URL (chat.env), nginx's upstream,
and each app host's /healthz URL. Before, an IPv6 private address came out
as fd00::11:8001, which nginx, redis-py and psycopg read as another address
or refuse.
"""

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import run_play  # noqa: E402 (tests/rendering.py)

# Each role's defaults only where it runs: in a real run one host's role
# defaults are not in another's hostvars.
APP_DEFAULTS = ["ansible/vars/site.yml", "ansible/roles/chat_app/defaults/main.yml"]
WEB_DEFAULTS = ["ansible/vars/site.yml", "ansible/roles/nginx/defaults/main.yml"]

PLAY = """\
- name: Write what the {hosts} hosts would be given
  hosts: "{hosts}"
  connection: local
  gather_facts: false
  tasks:
    - name: Write the app's connection settings
      ansible.builtin.copy:
        content: >-
          {{ {'redis_urls': chat_app_redis_urls, 'sentinels': chat_app_redis_sentinels,
              'database_url': chat_app_database_url, 'daphne': chat_app_daphne_address}
             | to_json }}
        dest: "{out}/{{ inventory_hostname }}.json"
        mode: "0644"
      when: inventory_hostname in groups['app']
    - name: Render nginx's upstream
      ansible.builtin.template:
        src: "{root}/ansible/roles/nginx/templates/etc/nginx/chat-upstream.conf.j2"
        dest: "{out}/upstream.conf"
        mode: "0644"
      when: inventory_hostname in groups['web']
"""

SECRETS = {"vault_chat_redis_password": "r" * 40, "vault_chat_db_password": "d" * 40}


def site(tmp_path, sentinel):
    hosts = {"lb": "fd00::1", "app1": "fd00::11", "app2": "fd00::12", "redis1": "fd00::21", "redis2": "fd00::22",
             "db1": "fd00::31"}
    groups = {"web": ["lb"], "app": ["app1", "app2"], "redis": ["redis1", "redis2"], "db": ["db1"]}
    if sentinel:
        groups["sentinel"] = ["redis1", "redis2", "db1"]
    inventory = {"all": {"hosts": {name: {"ansible_host": address} for name, address in hosts.items()},
                         "children": {group: {"hosts": {name: None for name in names}} for group, names in groups.items()}}}
    out = tmp_path / "out"
    out.mkdir()
    for hosts, defaults in [("app", APP_DEFAULTS), ("web", WEB_DEFAULTS)]:
        run_play(tmp_path / hosts, PLAY.replace("{out}", str(out)).replace("{hosts}", hosts), defaults, inventory,
                 {**SECRETS, "redis_sentinel": sentinel, "chat_internal_tls": False})
    return {name: json.loads((out / f"{name}.json").read_text()) for name in groups["app"]}, (out / "upstream.conf").read_text()


def test_ipv6_addresses_in_urls_and_the_upstream_are_bracketed(tmp_path):
    apps, upstream = site(tmp_path, sentinel=False)
    for settings in apps.values():
        parsed = [urlsplit(url) for url in settings["redis_urls"]]
        assert [(url.hostname, url.port) for url in parsed] == [("fd00::21", 6379), ("fd00::22", 6379)]
        database = urlsplit(settings["database_url"])
        assert (database.hostname, database.port, database.path) == ("fd00::31", 5432, "/chat")
    servers = [line.split()[1] for line in upstream.splitlines() if line.startswith("server ")]
    assert servers == ["[fd00::11]:8001", "[fd00::12]:8001"]


def test_ipv6_sentinels_are_bracketed(tmp_path):
    apps, _ = site(tmp_path, sentinel=True)
    assert sorted(apps["app1"]["sentinels"]) == ["[fd00::21]:26379", "[fd00::22]:26379", "[fd00::31]:26379"]
    assert apps["app1"]["redis_urls"] == []
