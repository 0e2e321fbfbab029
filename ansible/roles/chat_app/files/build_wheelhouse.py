#!/usr/bin/env python3
"""Build, on the control node, the wheelhouse a server installs the chat from.

A server gets every wheel it needs and installs them with `pip --no-index`,
so it needs neither compilers nor access to PyPI. Wheels are chosen for the
*server's* Python, CPU and C library, and the lock's environment markers are
evaluated for the server too: pip would evaluate them for the Python running
here (Debian 12's 3.11.2 needs async-timeout, a 3.11.7 control node does not).

The release id is a digest of the app's source and the lock, and the server's
Python (cp311: the release's virtualenv works with that Python only), so the
same code on the same Python always gives the same release, and a change of
either gives a new one: after an upgrade of Debian in place (3.11 to 3.13) a
rerun installs and switches to a release for the new Python. A wheelhouse
that is already built is reused. Prints one JSON object:
    {"changed": bool, "release": "<id>", "archive": "<path to .tar.gz>"}
"""

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

SOURCE_SKIP = {"__pycache__", "tests", "build", "staticfiles"}
SOURCE_SKIP_SUFFIXES = (".pyc", ".sqlite3", ".egg-info")


def source_files(app_dir):
    """The files that make the app's wheel, in a stable order."""
    files = [app_dir / "pyproject.toml"]
    for package in ("chatsite", "chat", "accounts"):
        for path in sorted((app_dir / package).rglob("*")):
            parts = set(path.relative_to(app_dir).parts)
            if path.is_file() and not parts & SOURCE_SKIP and not path.name.endswith(SOURCE_SKIP_SUFFIXES):
                files.append(path)
    return files


def release_id(app_dir, lock):
    digest = hashlib.sha256()
    for path in [*source_files(app_dir), lock]:
        name = path.relative_to(app_dir).as_posix() if path.is_relative_to(app_dir) else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def target_environment(python, machine):
    """PEP 508 marker values of the server (Debian: CPython on Linux)."""
    return {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
        "implementation_name": "cpython",
        "implementation_version": python,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": machine,
        "sys_platform": "linux",
        "os_name": "posix",
    }


def pins_for_target(lock, environment):
    """The lock's `name==version` lines whose markers hold on the server."""
    pins = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            pins.append(str(requirement))
    return pins


def platform_tags(glibc, machine):
    major, minor = (int(part) for part in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    return tags + [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def build(app_dir, lock, pins, python, glibc, machine, workdir):
    wheels = workdir / "wheels"
    # Build the app's wheel from a copy, so the source tree stays clean.
    source = workdir / "source"
    source.mkdir()
    for path in source_files(app_dir):
        target = source / path.relative_to(app_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)])
    tag = "".join(python.split(".")[:2])
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--dest", str(wheels), "--python-version", tag, "--implementation", "cp",
               "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none"]
    for platform in platform_tags(glibc, machine):
        command += ["--platform", platform]
    run(command + pins)
    app_version = next(wheels.glob("chat_service-*.whl")).name.split("-")[1]
    # What the server installs, exactly, with `pip install --no-index --find-links .`
    (wheels / "requirements.txt").write_text("\n".join([*pins, f"chat-service=={app_version}"]) + "\n")
    return wheels


def python_tag(python):
    """cp311 for 3.11.2: what a virtualenv and the wheels in it are bound to."""
    return "cp" + "".join(python.split(".")[:2])


def release_name(app_dir, lock, python):
    return f"{release_id(app_dir, lock)}-{python_tag(python)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", type=Path, required=True, help="the app's source directory (app/)")
    parser.add_argument("--lock", type=Path, required=True, help="the universal lock (requirements.txt)")
    parser.add_argument("--python", required=True, help="the server's Python version, e.g. 3.11.2")
    parser.add_argument("--glibc", required=True, help="the server's C library version, e.g. 2.36")
    parser.add_argument("--machine", default="x86_64", help="the server's CPU, as uname -m prints it")
    parser.add_argument("--out", type=Path, required=True, help="where wheelhouses are kept")
    args = parser.parse_args()

    app_dir, lock = args.app.resolve(), args.lock.resolve()
    release = release_name(app_dir, lock, args.python)
    name = f"{release}-{args.python}-glibc{args.glibc}-{args.machine}"
    archive = args.out.resolve() / f"{name}.tar.gz"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / ".lock", "w") as lockfile:
        # Several hosts of one site may ask for the same wheelhouse at once.
        fcntl.flock(lockfile, fcntl.LOCK_EX)
        changed = not archive.exists()
        if changed:
            pins = pins_for_target(lock, target_environment(args.python, args.machine))
            with tempfile.TemporaryDirectory(dir=args.out) as tmp:
                wheels = build(app_dir, lock, pins, args.python, args.glibc, args.machine, Path(tmp))
                partial = Path(tmp) / "wheelhouse.tar.gz"
                with tarfile.open(partial, "w:gz") as tar:
                    for path in sorted(wheels.iterdir()):
                        tar.add(path, arcname=path.name)
                partial.rename(archive)
    print(json.dumps({"changed": changed, "release": release, "archive": str(archive)}))


if __name__ == "__main__":
    main()
