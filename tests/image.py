"""Build the Dockerfile with podman and run the image's own commands, on machines with no Docker
engine (tests/test_image.py, benchmarks/image.py).

No registry image can be pulled here, so `python:3.11-slim` is stood in for by a Debian bookworm
root made with debootstrap (Python 3.11, venv, libgomp1, certificates), imported under that tag
where no image of that name exists (a machine that has the real one builds on it). The build sees
this machine's pip configuration and certificates (mounted read-only), as its own pip does.
`podman run` needs a setrlimit these sandboxes refuse, so the built root is mounted and its
commands run with chroot as the image's user, with the image's environment and working directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "python:3.11-slim"
TAG = "localhost/appraiser:test"
TOOLS = ("podman", "debootstrap", "chroot", "mount", "umount")
STAND_IN_PACKAGES = "python3,python3-venv,python-is-python3,libgomp1,ca-certificates"
# what the machine's pip reads to reach the package registry, given to the build as it is
BUILD_MOUNTS = ("/etc/pip.conf", "/etc/ssl/certs")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# one build at a time on this machine (xdist workers, concurrent sessions): the second reuses the
# first's layers instead of building the same stages beside it
BUILD_LOCK = Path(tempfile.gettempdir()) / "appraiser-image-build.lock"


def missing_tools() -> list[str]:
    """What this machine lacks to build and run the image (root is needed for chroot)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (chroot and mount)")
    return missing


def podman(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def ensure_base() -> None:
    """The base image, or its stand-in made once with debootstrap (about 2 minutes)."""
    if podman("image", "exists", BASE).returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="appraiser-base-") as folder:
        root = Path(folder) / "root"
        keyring = ["--keyring", KEYRING] if Path(KEYRING).exists() else []  # verified, or fail
        made = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={STAND_IN_PACKAGES}",
                *keyring,
                "bookworm",
                str(root),
            ],
            capture_output=True,
            text=True,
            timeout=900,  # a stalled mirror fails the test, not CI's whole time
        )
        if made.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {(made.stdout + made.stderr)[-3000:]}")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "-", BASE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr[-2000:]}")


def image_id(tag: str) -> str | None:
    done = podman("image", "inspect", "--format", "{{.Id}}", tag)
    return done.stdout.strip() if done.returncode == 0 else None


def build(tag: str = TAG, target: str | None = None) -> None:
    """`podman build` of the repository's Dockerfile (chroot isolation: no user namespaces).

    The image the tag moves away from is removed: each code change left one (about 1 GB of its
    own, the virtualenv's copy), and a few dozen runs filled this machine's disk. Nothing else is
    pruned: the untagged stage images are the next build's cache."""
    command = ["build", "--isolation", "chroot", "--pull=never", "--format", "docker", "-t", tag]
    for path in BUILD_MOUNTS:
        if Path(path).exists():
            command += ["-v", f"{path}:{path}:ro"]
    if target:
        command += ["--target", target]
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_base()
        before = image_id(tag)
        done = podman(*command, str(REPO), timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"podman build failed:\n{(done.stdout + done.stderr)[-4000:]}")
        if before and before != image_id(tag):
            podman("rmi", before)  # refused, and kept, while a container still uses it


@dataclass(frozen=True)
class Config:
    """What `docker run` would take from the image: its user, environment and working directory."""

    user: str
    env: dict[str, str]
    workdir: str
    size: int  # bytes, the image as stored

    @classmethod
    def of(cls, tag: str) -> Config:
        (info,) = json.loads(podman("image", "inspect", tag, check=True).stdout)
        config = info["Config"]
        env = dict(item.split("=", 1) for item in config.get("Env", []))
        return cls(config.get("User") or "0", env, config.get("WorkingDir") or "/", info["Size"])


@dataclass(frozen=True)
class Mounted:
    """A container's root on this machine, and how to run the image's commands in it."""

    root: Path
    config: Config

    def ids(self) -> str:
        """The image's USER as uid:gid, looked up in the image's own /etc/passwd."""
        name = self.config.user.split(":")[0]
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if name in (fields[0], fields[2]):
                return f"{fields[2]}:{fields[3]}"
        raise LookupError(f"the image's user {name} is not in its /etc/passwd")

    def command(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        variables = [f"{k}={v}" for k, v in (self.config.env | (env or {})).items()]
        return [
            "chroot",
            f"--userspec={self.ids()}",
            str(self.root),
            "/usr/bin/env",
            "-i",
            "-C",
            self.config.workdir,
            *variables,
            *argv,
        ]

    def run(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run to the end (the whole process group is killed past `timeout`)."""
        process = subprocess.Popen(
            self.command(argv, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            stop(process)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def popen(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start in a process group of its own: `stop` ends it with all its children."""
        return subprocess.Popen(
            self.command(argv, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def venv_bytes(self, path: str = "/opt/venv") -> int:
        done = subprocess.run(
            ["du", "-sb", str(self.root / path.lstrip("/"))], capture_output=True, text=True
        )
        return int(done.stdout.split()[0])


def stop(process: subprocess.Popen[str], grace: float = 30) -> None:
    """End a process started by `Mounted` and everything it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mounted(tag: str = TAG) -> Iterator[Mounted]:
    """A new container of `tag`, its root mounted with /proc and /dev (with /dev/shm, which
    joblib's semaphores need), removed afterwards."""
    container = podman("create", tag, check=True).stdout.strip()
    mounts: list[Path] = []
    try:
        root = Path(podman("mount", container, check=True).stdout.strip())
        for source, kind in (("/proc", "proc"), ("/dev", "rbind")):
            point = root / source.lstrip("/")
            point.mkdir(exist_ok=True)
            flags = ["-t", "proc", "proc"] if kind == "proc" else ["--rbind", source]
            subprocess.run(["mount", *flags, str(point)], check=True)
            mounts.append(point)
            if kind == "rbind":  # a slave: unmounting it never propagates to the host's /dev
                subprocess.run(["mount", "--make-rslave", str(point)], check=True)
        yield Mounted(root, Config.of(tag))
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(point)], check=False)
        podman("umount", container)
        podman("rm", "--force", container)
