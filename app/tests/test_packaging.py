"""The wheel the deployment installs holds every part of the app: packages, templates, static files, translations.

A file the wheel leaves out works in the checkout and fails only on a server
(an app missing from pyproject.toml's packages stops collectstatic there).
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

APP = Path(__file__).resolve().parent.parent
SKIP = {"tests", "__pycache__"}


def test_the_wheel_holds_every_file_the_app_needs(tmp_path):
    # Built from a copy: setuptools reuses a build/ directory it finds, and an
    # old one would hold files the current configuration leaves out.
    source = tmp_path / "app"
    shutil.copytree(APP, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "db.sqlite3*"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [
        path.relative_to(APP).as_posix()
        for package in ("chatsite", "chat", "accounts")
        for path in (APP / package).rglob("*")
        if path.is_file() and not SKIP & set(path.parts) and path.suffix != ".pyc"
    ]
    missing = [name for name in wanted if name not in names]
    assert not missing, f"the wheel leaves out {missing}"
