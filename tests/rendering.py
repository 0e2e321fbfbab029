"""Runs a small play against an inventory of names only, with the roles' defaults beneath it.

The roles take what the site derives (ansible/vars/site.yml) through their
defaults, and the inventory wins over both: here the defaults files are the
lowest layer of the inventory (group_vars/all/00-defaults.yml), the case's
own site-wide variables the next (10-site.yml), and its host variables win,
as in a real run. Nothing connects anywhere: the plays run on the control
node (connection: local) and only render templates or write values out.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def run_play(run_dir, play, defaults, inventory, site_vars=None):
    """Run play (YAML text; {root} is the repository) on inventory, defaults (paths under the root) beneath it."""
    group_vars = run_dir / "group_vars/all"
    group_vars.mkdir(parents=True)
    merged = {}
    for path in defaults:
        merged.update(yaml.safe_load((ROOT / path).read_text()))
    (group_vars / "00-defaults.yml").write_text(yaml.safe_dump(merged))
    (group_vars / "10-site.yml").write_text(yaml.safe_dump(site_vars or {}))
    (run_dir / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (run_dir / "play.yml").write_text(play.replace("{root}", str(ROOT)))
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(run_dir / "hosts.yml"), "-e", f"ansible_python_interpreter={sys.executable}",
         str(run_dir / "play.yml")],
        capture_output=True, text=True, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr


def prometheus_tool(name):
    """promtool or amtool: unpacked from Debian's packages by scripts/bootstrap test, else on PATH."""
    unpacked = ROOT / ".build/prometheus/usr/bin" / name
    found = unpacked if unpacked.exists() else shutil.which(name)
    assert found, f"{name} not found: run scripts/bootstrap test (it unpacks Debian's prometheus packages into .build)"
    return str(found)
