"""The monitoring role's alert rules, rendered as the role renders them, against promtool's tests.

Each alert must have a case that fires it and one that keeps it quiet
(chat_rules_test.yml); an alert without both fails here, so a rule added
later cannot go untested. promtool and amtool come from Debian's prometheus
and prometheus-alertmanager packages (scripts/bootstrap test unpacks them
into .build/prometheus without installing their services on this machine).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import ROOT, prometheus_tool  # noqa: E402 (tests/rendering.py)

ROLE = ROOT / "ansible/roles/monitoring"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
TESTS = Path(__file__).with_name("chat_rules_test.yml")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The rules and Alertmanager's configuration as the role writes them, with its defaults."""
    out = tmp_path_factory.mktemp("rules")
    play = [{
        "name": "Render the monitoring role's rules and Alertmanager configuration",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults/main.yml")],
        "tasks": [
            {"name": "Render the alert rules", "ansible.builtin.template": {
                "src": str(ROLE / "templates/etc/prometheus/rules/chat.yml.j2"), "dest": str(out / "chat.yml"),
                "mode": "0644"}},
            {"name": "Render Alertmanager's configuration", "ansible.builtin.template": {
                "src": str(ROLE / "templates/etc/prometheus/alertmanager.yml.j2"),
                "dest": str(out / "alertmanager.yml"), "mode": "0644"}},
        ],
    }]
    (out / "render.yml").write_text(json.dumps(play))
    # As an inventory would set them (extra vars: above the role's defaults, which vars_files loads).
    (out / "site.json").write_text(json.dumps({
        "monitoring_backup_hosts": ["chat-db1", "chat-db2"],  # the hosts the backup cases watch
        "monitoring_alertmanager_watchdog_urls": ["https://deadman.example/ping"],
        "monitoring_alertmanager_webhook_urls": ["https://chat.example/alerts"],
    }))
    result = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                             "-e", f"@{out / 'site.json'}",
                             str(out / "render.yml")],
                            capture_output=True, text=True, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy(TESTS, out / TESTS.name)
    return out


def alerts(rules_file):
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_pass_promtools_check(rendered):
    subprocess.run([prometheus_tool("promtool"), "check", "rules", str(rendered / "chat.yml")], check=True)


def test_every_alert_fires_and_stays_quiet_as_its_cases_say(rendered):
    result = subprocess.run([prometheus_tool("promtool"), "test", "rules", TESTS.name], cwd=rendered,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_it_and_one_that_keeps_it_quiet(rendered):
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    rules = alerts(rendered / "chat.yml")
    assert [name for name in rules if name not in fires] == []
    # The Watchdog is never quiet: that is its purpose.
    assert [name for name in rules if name not in quiet and name != "Watchdog"] == []


def test_the_watchdog_reaches_its_own_receiver_only(rendered):
    subprocess.run([prometheus_tool("amtool"), "check-config", str(rendered / "alertmanager.yml")], check=True,
                   capture_output=True)
    routing = [prometheus_tool("amtool"), "config", "routes", "test", f"--config.file={rendered / 'alertmanager.yml'}"]
    assert subprocess.run([*routing, "alertname=Watchdog"], capture_output=True, text=True).stdout.split() == ["watchdog"]
    assert subprocess.run([*routing, "alertname=HostDown", "host=chat-app1"],
                          capture_output=True, text=True).stdout.split() == ["chat"]
