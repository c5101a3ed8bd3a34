"""Build the wheelhouse a target installs from, on the controller.

The target needs no PyPI access, so every wheel it needs is chosen here, for
the TARGET's interpreter, never the controller's: dependencies depend on the
exact Python (redis needs async-timeout on Python < 3.11.3, and Debian 12's
is 3.11.2), and compiled wheels on its architecture and glibc. The app role
reads the target's marker environment (PEP 508) and glibc, and this script

- builds the project's own pure-Python wheel from a clean copy of the tree,
  with a fixed SOURCE_DATE_EPOCH so that the same code gives the same bytes;
- walks its dependencies with the target's markers, taking the version
  pinned in requirements.lock, or for a dependency only the target needs the
  newest that fits (remembered in the cache, so it stays the same);
- downloads binary wheels only, for the target's tags (`pip download
  --only-binary=:all: --platform ... --python-version ...`), into a cache;
- writes the wheels and the resolved pins (constraints.txt) into one tar with
  fixed names, order, owners and times: it changes only when a wheel does,
  which keeps the app role idempotent.

Prints one JSON line: {"changed": bool, "archive": path, "sha1": hex}.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename
from packaging.version import Version

# 1980-01-01: the earliest time a zip (a wheel) can hold.
SOURCE_DATE_EPOCH = "315532800"
# What the clean copy of the project leaves out: at its top, and anywhere.
TOP_IGNORED = {
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    ".state",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    ".mypy_cache",
    ".vagrant",
    "tests",
    "bench",
    "deploy",
    "node_modules",
    ".env",
}
ANY_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Target:
    """What pip must know to pick wheels for the target."""

    def __init__(self, environment: dict[str, str], glibc: str) -> None:
        self.environment = environment
        self.python = environment["python_full_version"]
        self.machine = environment["platform_machine"]
        major, minor = (int(part) for part in glibc.split(".")[:2])
        if major != 2 or minor < 17:
            raise SystemExit(f"glibc {glibc} is too old for the wheelhouse (2.17 or newer needed)")
        self.glibc_minor = minor
        short = "".join(self.python.split(".")[:2])
        self.kind = f"cp{short}-{self.machine}-glibc2.{minor}"
        self.pip_options = [
            "--only-binary=:all:",
            "--no-deps",
            "--implementation",
            "cp",
            "--python-version",
            self.python,
            "--abi",
            f"cp{short}",
            "--abi",
            "abi3",
            "--abi",
            "none",
        ]
        # Every manylinux tag this glibc accepts; pip expands the legacy
        # manylinux2014 alias to manylinux2010 and manylinux1 itself.
        for m in range(minor, 16, -1):
            self.pip_options += ["--platform", f"manylinux_2_{m}_{self.machine}"]
        self.pip_options += ["--platform", f"manylinux2014_{self.machine}"]

    def wants(self, requirement: Requirement, extras: set[str]) -> bool:
        """Whether the target installs a dependency requested with these extras."""
        if requirement.marker is None:
            return True
        return any(requirement.marker.evaluate({**self.environment, "extra": extra}) for extra in extras | {""})


class Cache:
    """Downloaded wheels of one kind of target."""

    def __init__(self, folder: Path, target: Target) -> None:
        self.folder = folder
        self.target = target
        folder.mkdir(parents=True, exist_ok=True)

    def wheels(self, name: str) -> dict[Version, Path]:
        found = {}
        for path in self.folder.glob("*.whl"):
            wheel_name, version, _, _ = parse_wheel_filename(path.name)
            if wheel_name == name:
                found[version] = path
        return found

    def download(self, specs: list[str]) -> None:
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            *self.target.pip_options,
            "--dest",
            str(self.folder),
            *specs,
        ]
        run(argv, f"no wheel of {', '.join(specs)} for {self.target.kind}")

    def pick(self, requirement: Requirement, pinned: Version | None) -> Path:
        """The wheel of the pinned version, else the newest cached one that fits."""
        name = normalize(requirement.name)
        for attempt in range(2):
            wheels = self.wheels(name)
            if pinned is not None:
                if pinned in wheels:
                    return wheels[pinned]
            else:
                fitting = [v for v in wheels if requirement.specifier.contains(v, prereleases=False)]
                if fitting:
                    return wheels[max(fitting)]
            if attempt == 0:
                self.download([f"{name}=={pinned}" if pinned is not None else f"{name}{requirement.specifier}"])
        raise SystemExit(f"pip downloaded no wheel of {requirement} for {self.target.kind}")


def run(argv: list[str], what: str, **kwargs: object) -> None:
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.stderr.write(result.stdout)
        raise SystemExit(f"{what}: {' '.join(argv)} failed ({result.returncode})")


def read_pins(lock: Path) -> dict[str, Version]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name.split("[")[0])] = Version(version.split(";")[0].strip())
    return pins


def requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = email.parser.Parser().parsestr(archive.read(metadata).decode("utf-8"))
    return [Requirement(line) for line in message.get_all("Requires-Dist") or []]


def build_project(project: Path, dest: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="wxrelay-wheel-") as scratch:
        source = Path(scratch) / "src"

        def ignore(folder: str, names: list[str]) -> set[str]:
            top = TOP_IGNORED if Path(folder) == project else set()
            return set(ANY_IGNORED(folder, names)) | (top & set(names))

        shutil.copytree(project, source, ignore=ignore, symlinks=True)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--wheel-dir",
                str(dest),
                str(source),
            ],
            "building the project's wheel",
            env=env,
        )
    (wheel,) = dest.glob("*.whl")
    return wheel


def resolve(roots: list[Requirement], pins: dict[str, Version], cache: Cache) -> dict[str, Path]:
    """Every wheel the target installs for these requirements, by normalized name."""
    chosen: dict[str, Path] = {}
    done: set[tuple[str, str]] = set()  # (name, extra) whose dependencies are queued
    queue: list[tuple[list[Requirement], set[str]]] = [(roots, set())]
    missing = [f"{name}=={version}" for name, version in pins.items() if version not in cache.wheels(name)]
    if missing:
        # Most of the lock at once: one pip run instead of one per wheel.
        cache.download(missing)
    while queue:
        requirements, extras = queue.pop()
        for requirement in requirements:
            if not cache.target.wants(requirement, extras):
                continue
            name = normalize(requirement.name)
            if name not in chosen:
                chosen[name] = cache.pick(requirement, pins.get(name))
            version = parse_wheel_filename(chosen[name].name)[1]
            if not requirement.specifier.contains(version, prereleases=True):
                raise SystemExit(f"{chosen[name].name} does not satisfy {requirement}: update requirements.lock")
            new = {extra for extra in requirement.extras | {""} if (name, extra) not in done}
            if new:
                done.update((name, extra) for extra in new)
                queue.append((requires(chosen[name]), new - {""}))
    return chosen


def archive_bytes(folder: Path) -> bytes:
    """A tar of the folder's files that depends on their names and bytes only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = len(data), int(SOURCE_DATE_EPOCH), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="the project's root (pyproject.toml)")
    parser.add_argument("--lock", type=Path, required=True, help="pinned requirements")
    parser.add_argument("--environment", required=True, help="the target's PEP 508 marker environment (JSON)")
    parser.add_argument("--glibc", required=True, help="the target's glibc version, e.g. 2.36")
    parser.add_argument("--requirement", action="append", default=[], help="also install this (repeatable)")
    parser.add_argument("--cache", type=Path, required=True, help="where downloaded wheels are kept")
    parser.add_argument("--archive", type=Path, required=True, help="the archive to (re)write")
    args = parser.parse_args(argv)

    target = Target(json.loads(args.environment), args.glibc)
    cache = Cache(args.cache / target.kind, target)
    with tempfile.TemporaryDirectory(prefix="wxrelay-wheelhouse-") as scratch:
        house = Path(scratch)
        project_wheel = build_project(args.project.resolve(), house)
        roots = requires(project_wheel) + [Requirement(spec) for spec in args.requirement]
        chosen = resolve(roots, read_pins(args.lock), cache)
        pins = []
        for name, wheel in sorted(chosen.items()):
            shutil.copy2(wheel, house / wheel.name)
            pins.append(f"{name}=={parse_wheel_filename(wheel.name)[1]}\n")
        (house / "constraints.txt").write_text("".join(pins))
        data = archive_bytes(house)
    changed = not args.archive.is_file() or args.archive.read_bytes() != data
    if changed:
        args.archive.parent.mkdir(parents=True, exist_ok=True)
        partial = args.archive.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(args.archive)
    print(json.dumps({"changed": changed, "archive": str(args.archive), "sha1": hashlib.sha1(data).hexdigest()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
