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


def _wheelhouse_builder():
    """The control node's wheelhouse builder (the chat_app role's files/build_wheelhouse.py)."""
    import importlib.util

    path = APP.parent / "ansible" / "roles" / "chat_app" / "files" / "build_wheelhouse.py"
    spec = importlib.util.spec_from_file_location("build_wheelhouse", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_release_is_named_for_the_servers_python_so_an_upgraded_debian_gets_a_new_one():
    builder = _wheelhouse_builder()
    lock = APP.parent / "requirements.txt"
    debian12 = builder.release_name(APP, lock, "3.11.2")
    assert debian12 == builder.release_name(APP, lock, "3.11.9"), "a Python bugfix release needs no new virtualenv"
    assert debian12.endswith("-cp311")
    assert builder.release_name(APP, lock, "3.13.5") != debian12, "Debian 13's Python 3.13 needs a release of its own"
