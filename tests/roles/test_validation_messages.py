"""A role's check of its settings names the rules the inventory breaks, and only those.

Each case runs the role on this machine (check mode: nothing is changed, and
the role stops at its check) with one setting broken, at -v, as an operator
reading the run log would see it: the broken variable is named with its
message; a rule that passes is neither named nor shown with its value.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

PLAY = """\
- name: Run the role's check of its settings
  hosts: localhost
  connection: local
  gather_facts: true
  # The roles' release checks read the distribution only.
  gather_subset: [min]
  tasks:
    - name: Run the role
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {tasks_from}
"""

# role, tasks file, settings (one broken), the broken one's message, rules that pass (variable and
# a piece of their message that would carry the value).
CASES = [
    ("backup", "main", {"backup_database": "sqlite", "backup_password": "too-short-secret"},
     "backup_password: must be at least 32 characters (got 16).",
     {"backup_database": "must be sqlite or postgresql (got sqlite)",
      "backup_keep_daily": "must be counts, not all 0"}),
    ("postgresql", "main", {"postgresql_password": "p" * 20, "postgresql_database": "Chat-History"},
     "postgresql_database: postgresql_database and postgresql_user must be lower-case identifiers (got Chat-History,",
     {"postgresql_password": "must be at least 16 characters (got 20)",
      "postgresql_listen_addresses": "name at least one address"}),
    ("exporters", "main", {"exporters_listen_address": "0.0.0.0"},
     "exporters_listen_address: must be this host's private address, not a wildcard (got '0.0.0.0').",
     {"exporters_node_port": "must be distinct ports (got [9100"}),
    ("monitoring", "main", {"monitoring_alert_for": "soon"},
     "monitoring_alert_for: monitoring_alert_for, monitoring_alert_resource_for",
     {"monitoring_alertmanager_webhook_urls": "must be a list of http:// or https:// URLs (got [])",
      "monitoring_alertmanager_email_to": "must be a list of addresses (got [])"}),
    ("redis", "main", {"redis_password": "r" * 24, "redis_maxmemory": "lots"},
     "redis_maxmemory: must be a size such as 256mb (got lots).",
     {"redis_password": "must be at least 16 characters (got 24)",
      "redis_bind_addresses": "must name at least one address (got ['127.0.0.1'])"}),
    ("host_baseline", "main", {"host_baseline_automatic_reboot_time": "25:00"},
     "host_baseline_automatic_reboot_time: must be HH:MM or now (got 25:00).",
     {"host_baseline_app_memory_max": "must be bytes (2G)",
      "host_baseline_app_tasks_max": "must be a number, a percentage"}),
    ("chat_app", "validate", {"chat_app_secret_key": "s" * 50, "chat_app_allowed_hosts": ["chat.test"],
                              "chat_app_server": "gunicorn"},
     "chat_app_server: ",
     {"chat_app_secret_key": "must be at least 32 characters (got 50)",
      "chat_app_allowed_hosts": "as a list (got ['chat.test'])"}),
    ("chat_app", "validate", {"chat_app_secret_key": "s" * 50, "chat_app_allowed_hosts": ["chat.test"],
                              "chat_app_secret_key_fallbacks": ["o" * 50, "too-short-old-key"]},
     "chat_app_secret_key_fallbacks: must be a list of earlier keys, each at least 32 characters (got 2 entries).",
     {"chat_app_allowed_hosts": "as a list (got ['chat.test'])"}),
]


@pytest.mark.parametrize("role, tasks_from, settings, broken, passing", CASES, ids=[case[0] for case in CASES])
def test_check_names_only_the_broken_rule(tmp_path, role, tasks_from, settings, broken, passing):
    playbook = tmp_path / "check.yml"
    playbook.write_text(PLAY.format(role=role, tasks_from=tasks_from))
    extra_vars = tmp_path / "settings.json"
    extra_vars.write_text(json.dumps(settings))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "ansible" / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="false", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    run = subprocess.run([str(ANSIBLE_PLAYBOOK), "--check", "-v", f"--extra-vars=@{extra_vars}", str(playbook)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    check = output[output.index("Check the"):] if "Check the" in output else output
    assert broken in check, output
    for variable, message in passing.items():
        assert message not in check, f"a passing rule's message was shown:\n{output}"
        assert variable not in check.replace(broken, ""), f"a passing rule was named:\n{output}"
