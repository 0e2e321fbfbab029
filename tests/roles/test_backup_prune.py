"""The backup host's pruning of a copy keeps the newest snapshot that holds messages.

chat-backup-prune (the backup role's, rendered) runs against a real restic
repository on this machine with the keep policy given and a history whose
newest snapshots are of an empty, rebuilt database: the policy alone would
forget the last one with messages; the prune must keep it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rendering import run_play  # noqa: E402 (tests/rendering.py)

PLAY = """\
- name: Render chat-backup-prune
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render it
      ansible.builtin.template:
        src: "{root}/ansible/roles/backup/templates/usr/local/sbin/chat-backup-prune.j2"
        dest: "{out}/chat-backup-prune"
        mode: "0755"
"""

def test_the_newest_snapshot_with_messages_survives_the_keep_policy(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_play(tmp_path / "run", PLAY.replace("{out}", str(out)), [], {"all": {"hosts": {"localhost": None}}})
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "password").write_text("p" * 40)
    repository = tmp_path / "repository"
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(credentials / "password"),
           "RESTIC_CACHE_DIR": str(tmp_path / "cache"), "CREDENTIALS_DIRECTORY": str(credentials)}
    restic = ["restic", "--repo", str(repository), "--quiet"]
    subprocess.run([*restic, "init"], env=env, check=True, capture_output=True)
    data = tmp_path / "dump"
    data.mkdir()
    for day, messages in [(1, 7), (2, 9), (3, 0), (4, 0)]:
        (data / "dump.sql").write_text(f"day {day}: {messages} messages\n")
        subprocess.run([*restic, "backup", "--tag", "chat-sqlite", "--tag", f"messages={messages}",
                        "--time", f"2026-12-0{day} 03:00:00", str(data)], env=env, check=True, capture_output=True)

    pruned = subprocess.run([str(out / "chat-backup-prune"), str(repository), "--tag", "chat-sqlite", "--keep-last", "1"],
                            env=env, capture_output=True, text=True)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "checked, forgotten and pruned" in pruned.stdout

    left = json.loads(subprocess.run([*restic, "snapshots", "--json"], env=env, check=True,
                                     capture_output=True, text=True).stdout)
    assert sorted(tag for snapshot in left for tag in snapshot["tags"] if tag.startswith("messages=")) == [
        "messages=0", "messages=9"]
