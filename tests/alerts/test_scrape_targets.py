"""Prometheus scrapes each target where the roles make it listen, so that no alert fires for ever.

Each case is an inventory; the roles' own defaults decide, on each host,
where the app's metrics and the exporters listen and whether nginx's
certificate is self-signed; the monitoring host's rendered prometheus.yml
must scrape exactly there and probe HTTPS with the right module. Found by a
review: on a one-host site ChatAppProcessDown fired for ever (the metrics on
127.0.0.1, scraped on the host's address), a changed exporters_listen_address
fired HostDown, and a self-signed web host in its own group fired
HttpsProbeFailing (the verify setting was read on the monitoring host).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import prometheus_tool, run_play  # noqa: E402 (tests/rendering.py)

# The roles' defaults (and what vars/site.yml derives) as the lowest layer of
# the inventory, so that the case's own group and host variables win over them
# as they do in a real run: the app hosts' roles' for where they listen, the
# monitoring role's (only: in a real run the other roles' defaults are not in
# the monitoring host's hostvars) for what it scrapes.
LISTEN_DEFAULTS = [
    "ansible/vars/site.yml",
    "ansible/roles/chat_app/defaults/main.yml",
    "ansible/roles/exporters/defaults/main.yml",
]
MONITORING_DEFAULTS = [
    "ansible/roles/monitoring/defaults/main.yml",
    "ansible/roles/monitoring/vars/main.yml",
]

LISTEN = """\
- name: Read where the roles make each host listen
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Write what each host listens on
      ansible.builtin.copy:
        content: "{{{{ {{'metrics': chat_app_metrics_address, 'exporters': exporters_listen_address}} | to_json }}}}"
        dest: "{out}/listens-{{{{ inventory_hostname }}}}.json"
        mode: "0644"
"""

RENDER = """\
- name: Render the monitoring host's configuration
  hosts: monitoring
  connection: local
  gather_facts: false
  tasks:
    - name: Render prometheus.yml
      ansible.builtin.template:
        src: {root}/ansible/roles/monitoring/templates/etc/prometheus/prometheus.yml.j2
        dest: "{out}/prometheus.yml"
        mode: "0644"
    - name: Render the blackbox exporter's modules
      ansible.builtin.template:
        src: {root}/ansible/roles/monitoring/templates/etc/prometheus/blackbox.yml.j2
        dest: "{out}/blackbox.yml"
        mode: "0644"
"""


def run(tmp_path, name, play, defaults, inventory, site_vars):
    run_play(tmp_path / name, play.format(root="{root}", out=tmp_path), defaults, inventory, site_vars)


def render(tmp_path, inventory, site_vars=None, listens=True):
    if listens:
        run(tmp_path, "listen", LISTEN, LISTEN_DEFAULTS, inventory, site_vars)
    run(tmp_path, "render", RENDER, MONITORING_DEFAULTS, inventory, site_vars)
    checked = subprocess.run([prometheus_tool("promtool"), "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    jobs = {job["job_name"]: [(target, group["labels"]) for group in job["static_configs"] for target in group["targets"]]
            for job in config["scrape_configs"]}
    listens = {path.stem.removeprefix("listens-"): json.loads(path.read_text()) for path in tmp_path.glob("listens-*.json")}
    return jobs, listens, yaml.safe_load((tmp_path / "blackbox.yml").read_text())


def test_a_one_host_site_scrapes_its_app_metrics_where_they_listen(tmp_path):
    host = {"ansible_host": "10.0.0.5", "chat_app_daphne_processes": 2}
    jobs, listens, _ = render(tmp_path, {"all": {"hosts": {"solo": host}, "children": {
        group: {"hosts": {"solo": None}} for group in ["app", "web", "redis", "monitoring"]}}})
    assert listens["solo"]["metrics"] == "127.0.0.1"
    assert [target for target, _ in jobs["chat_app"]] == ["127.0.0.1:9200", "127.0.0.1:9201"]


def test_app_hosts_beside_a_monitoring_host_are_scraped_on_their_addresses(tmp_path):
    jobs, listens, _ = render(tmp_path, {"all": {"children": {
        "app": {"hosts": {"app1": {"ansible_host": "10.0.0.11", "chat_app_daphne_processes": 1}}},
        "web": {"hosts": {"lb": {"ansible_host": "10.0.0.1"}}},
        "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}})
    assert listens["app1"]["metrics"] == "10.0.0.11"
    assert [target for target, _ in jobs["chat_app"]] == ["10.0.0.11:9200"]


def test_the_exporters_are_scraped_on_the_address_they_were_told_to_listen_on(tmp_path):
    jobs, listens, _ = render(tmp_path, {"all": {"children": {
        "app": {"hosts": {"app1": {"ansible_host": "203.0.113.11", "chat_private_address": "10.0.0.11",
                                   "exporters_listen_address": "10.0.1.11"}}},
        "redis": {"hosts": {"redis1": {"ansible_host": "10.0.0.21"}}},
        "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}})
    node = dict((labels["host"], target) for target, labels in jobs["node"])
    assert node == {host: f"{listens[host]['exporters']}:9100" for host in listens}
    assert node["app1"] == "10.0.1.11:9100"
    assert [target for target, _ in jobs["redis"]] == ["10.0.0.21:9121"]


def test_each_web_host_is_probed_with_its_own_certificates_verification(tmp_path):
    jobs, _, blackbox = render(tmp_path, listens=False, site_vars={"chat_https": True}, inventory={"all": {"children": {
        "web": {"hosts": {"lb1": {"ansible_host": "10.0.0.1", "nginx_tls_self_signed": True},
                          "lb2": {"ansible_host": "10.0.0.2"}}},
        "app": {"hosts": {"app1": {"ansible_host": "10.0.0.11"}}},
        "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}})
    modules = {labels["host"]: labels["__param_module"] for _, labels in jobs["chat_tls"]}
    assert modules == {"lb1": "chat_tls_self_signed", "lb2": "chat_tls"}
    assert blackbox["modules"]["chat_tls"]["http"]["tls_config"]["insecure_skip_verify"] is False
    assert blackbox["modules"]["chat_tls_self_signed"]["http"]["tls_config"]["insecure_skip_verify"] is True


@pytest.mark.parametrize("verify, module", [(True, "chat_tls"), (False, "chat_tls_self_signed")])
def test_monitoring_tls_verify_set_decides_for_every_web_host(tmp_path, verify, module):
    jobs, _, _ = render(tmp_path, listens=False, site_vars={"chat_https": True, "monitoring_tls_verify": verify}, inventory={"all": {"children": {
        "web": {"hosts": {"lb1": {"ansible_host": "10.0.0.1", "nginx_tls_self_signed": True},
                          "lb2": {"ansible_host": "10.0.0.2"}}},
        "app": {"hosts": {"app1": {"ansible_host": "10.0.0.11"}}},
        "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}})
    assert {labels["__param_module"] for _, labels in jobs["chat_tls"]} == {module}


# Redis fails over by Sentinel: a master and its replica, and Sentinel on
# both and on the db host (which runs no Redis), as in the cluster scenario.
SENTINEL_SITE = {"all": {"children": {
    "app": {"hosts": {"app1": {"ansible_host": "10.0.0.11"}}},
    "redis": {"hosts": {"redis1": {"ansible_host": "10.0.0.21"}, "redis2": {"ansible_host": "10.0.0.22"}}},
    "db": {"hosts": {"db1": {"ansible_host": "10.0.0.31"}}},
    "sentinel": {"hosts": {"redis1": None, "redis2": None, "db1": None}},
    "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.9"}}}}}}

SENTINEL_LISTEN = """\
- name: Read where each host's Sentinel exporter listens, and what its firewall opens
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Write it
      ansible.builtin.copy:
        content: >-
          {{{{ {{'enabled': exporters_sentinel_enabled | bool, 'port': exporters_sentinel_port | int,
                'address': exporters_listen_address, 'opened': site_firewall_exporter_ports | map('int') | list}}
             | to_json }}}}
        dest: "{out}/sentinel-{{{{ inventory_hostname }}}}.json"
        mode: "0644"
"""


def test_each_sentinel_host_is_scraped_where_its_sentinel_exporter_listens(tmp_path):
    site_vars = {"redis_sentinel": True}
    run(tmp_path, "sentinel", SENTINEL_LISTEN, LISTEN_DEFAULTS, SENTINEL_SITE, site_vars)
    jobs, _, _ = render(tmp_path, SENTINEL_SITE, site_vars)
    sentinels = {path.stem.removeprefix("sentinel-"): json.loads(path.read_text())
                 for path in tmp_path.glob("sentinel-*.json")}
    assert sorted(host for host, sentinel in sentinels.items() if sentinel["enabled"]) == ["db1", "redis1", "redis2"]
    targets = {labels["host"]: target for target, labels in jobs["redis_sentinel"]}
    assert targets == {host: f"{sentinel['address']}:{sentinel['port']}"
                       for host, sentinel in sentinels.items() if sentinel["enabled"]}
    assert targets["db1"] == "10.0.0.31:9122"
    # The firewall lets the monitoring host reach it there, and only there.
    assert sorted(host for host, sentinel in sentinels.items() if sentinel["port"] in sentinel["opened"]) == sorted(targets)
    # The Redis exporters stay on the Redis hosts.
    assert sorted(labels["host"] for _, labels in jobs["redis"]) == ["redis1", "redis2"]


def test_a_site_without_sentinel_has_no_sentinel_target(tmp_path):
    jobs, _, _ = render(tmp_path, SENTINEL_SITE, {"redis_sentinel": False})
    assert "redis_sentinel" not in jobs
